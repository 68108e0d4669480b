"""Every option of every config group and every grid point of every experiment composes and validates
(lightning-hydra-template style), task declarations are enforced, and every experiment runs (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from fgkd import sweeps

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
#: groups whose options are chosen with `<group>=<option>`; `_base` files are included by the options themselves
GROUPS = ("task", "data", "model", "preprocess", "kd", "trainer", "logger", "callbacks", "method", "scale", "debug", "pretrain",
          "hparams_search")
#: options that need something the test machine lacks (a dataset path, a GPU) to validate, with that something
NEEDS = {("data", "yolo"): ["data.root=/tmp"], ("data", "pdi"): ["data.root=/tmp"],
         ("data", "coco"): ["data.root=/tmp", "data.ann_train=a.json"],
         ("preprocess", "none"): ["kd.teacher_view=original"],  # the default kd=cs teacher needs a combo for X_M
         # the anomaly task's options are validated under task=anomaly (the default task is detect)
         ("data", "synthtex"): ["task=anomaly"], ("data", "mvtec"): ["task=anomaly", "data.root=/tmp"],
         ("data", "btad"): ["task=anomaly", "data.root=/tmp"], ("model", "rd"): ["task=anomaly"],
         ("model", "rd2t"): ["task=anomaly"], ("callbacks", "anomaly"): ["task=anomaly"],
         **{("model", m): ["task=anomaly"] for m in ("bsdrd", "bsdrd_struct", "bsdrd_detail", "bsdrd_no_mdgf")},
         ("data", "synthtiles"): ["task=anomaly"], ("data", "mtd"): ["task=anomaly", "data.root=/tmp"]}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("[!_]*.yaml"))


def _grid_points(name: str) -> list[list[str]]:
    """The override lists of every run of experiment ``name`` (one plain run for a preset without a grid)."""
    import yaml

    raw = yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text()) or {}
    if not (raw.get("hydra") or {}).get("sweeper") and not (raw.get("sweep") or {}).get("runs_from"):
        return [[f"experiment={name}"]]
    return [list(run.overrides) for run in sweeps.load_experiment(name).runs(scale="smoke")]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(compose_train, group, option):
    from fgkd.config import validate

    cfg = compose_train(f"{group}={option}", *NEEDS.get((group, option), []))
    settings = validate(cfg)
    assert settings.task == cfg.task


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_grid_point_composes_and_validates(compose_train, name):
    from fgkd.config import validate

    points = _grid_points(name)
    assert points, name
    for overrides in points:
        validate(compose_train(*overrides))


def test_model_and_data_declare_their_task_and_a_mismatch_lists_the_valid_options(compose_train):
    from fgkd.config import ConfigError, group_options, validate
    from fgkd.models.registry import list_models

    assert set(group_options("model", "detect")) == set(list_models("detect"))
    assert set(group_options("model", "anomaly")) == set(list_models("anomaly")) == {
        "rd", "rd2t", "bsdrd", "bsdrd_struct", "bsdrd_detail", "bsdrd_no_mdgf"}
    assert set(group_options("model", "detect")) | set(group_options("model", "anomaly")) == set(_options("model"))
    assert set(group_options("data", "detect")) == {"coco", "pdi", "synthpipes", "yolo"}
    assert set(group_options("data", "anomaly")) == {"btad", "mtd", "mvtec", "synthtex", "synthtiles"}
    cfg = compose_train("model.task=anomaly")
    with pytest.raises(ConfigError, match=r"model is a anomaly config but task=detect; the model options for "
                                          r"task=detect are: rtdetr_l, rtdetr_r18, rtdetr_r50, yolov5l, .*yolov6l, .*yolov8s"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"data is a x config .* task=detect are: coco, pdi, synthpipes, yolo"):
        validate(compose_train("data.task=x"))
    unknown = compose_train()
    with open_dict(unknown):
        unknown.task = "segment"
    with pytest.raises(ConfigError, match=r"task='segment' is not allowed; choose one of: anomaly, detect"):
        validate(unknown)
    with pytest.raises(ConfigError, match="optimized_metric"):
        validate(compose_train("optimized_metric=val/auroc"))
    with pytest.raises(ConfigError, match=r"model is a detect config but task=anomaly; the model options for "
                                          r"task=anomaly are: bsdrd, bsdrd_detail, bsdrd_no_mdgf, bsdrd_struct, rd, rd2t"):
        validate(compose_train("task=anomaly", "model=yolov8n"))
    with pytest.raises(ConfigError, match=r"data is a detect config but task=anomaly; .* btad, mtd, mvtec, synthtex, synthtiles"):
        validate(compose_train("task=anomaly", "data=synthpipes"))


def test_dev_scale_keeps_yolov6_lr0_unscaled_and_paper_scales_it_by_batch_over_32(compose_train):
    from fgkd.lit.optim import Recipe, resolve_optimizer
    from fgkd.tasks.detect import DetectTask, recipe_for_init

    def lr(*overrides: str) -> float:
        cfg = compose_train("model=yolov6s", *overrides)
        recipe = Recipe.from_config(recipe_for_init({**DetectTask().model_config(cfg, "student"),
                                                     "recipe": DetectTask().recipe(cfg, "student")}))
        return resolve_optimizer(recipe, num_classes=3, batch_size=cfg.batch_size, accumulate=1, epochs=30,
                                 dataset_size=96).lr, cfg.batch_size

    assert lr() == (pytest.approx(0.01), 8)  # scratch lr0 of yolov6s at batch 8: no batch / 32 factor at scale=dev
    paper_lr, paper_batch = lr("scale=paper")
    assert paper_lr == pytest.approx(0.01 * paper_batch / 32)  # the reference engine's scaling


def test_heterogeneous_teacher_is_chosen_from_the_model_group(compose_train):
    from fgkd.config import ConfigError, validate
    from fgkd.tasks.detect import DetectTask

    task = DetectTask()
    cfg = compose_train("model=yolov8n", "model@teacher.model=yolov6l")
    assert validate(cfg).teacher_model == "yolov6l"
    assert task.model_config(cfg, "teacher")["name"] == "yolov6l" and task.model_config(cfg, "student")["name"] == "yolov8n"
    assert task.teacher_spec(cfg)["model"]["name"] == "yolov6l"
    assert task.recipe(cfg, "teacher")["optimizer"]["nbs"] == cfg.batch_size  # the scale preset reaches it too
    plain = compose_train("model=yolov8n")
    assert task.model_config(plain, "teacher")["name"] == "yolov8n"  # no teacher.model: the student's architecture
    bad = compose_train()
    with open_dict(bad):
        bad.teacher.model = "yolov6l"  # a plain value where a config of the model group belongs
    with pytest.raises(ConfigError, match=r"model@teacher.model=yolov6l"):
        validate(bad)


@pytest.mark.slow
@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_runs_a_tiny_fast_dev_run(tmp_path, fgkd_cache, name):
    """``experiment=<name>`` with its first grid point, one batch of one epoch (Lightning fast_dev_run)."""
    overrides = _grid_points(name)[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides, "debug=fast", "+trainer.fast_dev_run=1",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_speed_keys_are_checked(compose_train):
    from fgkd.config import ConfigError, validate

    validate(compose_train("channels_last=false", "compile=reduce-overhead"))
    with pytest.raises(ConfigError, match=r"channels_last must be true or false, got 'yes'"):
        validate(compose_train("channels_last=yes"))
    with pytest.raises(ConfigError, match=r"compile='fast' is not allowed; choose one of: default, reduce-overhead, "
                                          r"max-autotune \(e.g. `python train.py compile=true`\)"):
        validate(compose_train("compile=fast"))
