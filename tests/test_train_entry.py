"""train.py, conf/ and fgkd.engine / fgkd.pipeline / fgkd.tasks.detect / fgkd.config: composition, validation errors and tiny end-to-end runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIVE = ["map", "map_50", "mar_1", "mar_10", "mar_100"]
TINY = [
    "imgsz=64", "epochs=1", "batch_size=2", "num_workers=0",
    "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
    "trainer.limit_train_batches=2", "logger=none", "kd=none",
]


def test_defaults_and_the_paper_command_compose_and_validate(compose_train):
    from fgkd.config import validate

    cfg = compose_train()
    settings = validate(cfg)
    assert (settings.stage, settings.model, settings.kd, settings.preprocess) == ("full", "yolov8n", "cs", "rb_sf")  # FAKD
    assert cfg.imgsz % 32 == 0 and cfg.trainer.max_epochs == cfg.epochs
    cfg = compose_train("model=yolov6s", "kd=cs", "alpha=0.5")
    settings = validate(cfg)
    assert (settings.model, settings.kd, settings.alpha) == ("yolov6s", "cs", 0.5)
    assert cfg.model.recipe.optimizer.name == "sgd"


def test_experiment_and_debug_presets_compose(compose_train):
    cfg = compose_train("experiment=fakd_best")
    assert (cfg.model.name, cfg.kd.name, cfg.preprocess.combo, cfg.alpha) == ("yolov6s", "cs", "rb_sf", 0.5)
    cfg = compose_train("debug=fast")
    assert cfg.epochs == 1 and cfg.imgsz == 64 and len(cfg.logger) == 0 and cfg.trainer.limit_train_batches == 2


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["alpha=-1"], "alpha"),
        (["eval_view=masked"], "eval_view"),
        (["stage=warmup"], "stage"),
        (["imgsz=100"], "imgsz"),
        (["batch_size=0"], "batch_size"),
        (["model.name=yolov99"], "model.name"),
        (["kd=cs", "kd.teacher_view=both"], "kd.teacher_view"),
        (["preprocess.combo=blur_all"], "preprocess.combo"),
        (["kd.name=fancy"], "kd.name"),
        (["stage=student", "kd=cs"], "teacher.ckpt"),
        (["teacher.ckpt=/nonexistent/teacher.pt"], "teacher.ckpt"),
        (["model.recipe.optimizer.name=lion"], "model.recipe.optimizer.name"),
        (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(compose_train, overrides, key):
    from fgkd.config import ConfigError, validate

    with pytest.raises(ConfigError) as info:
        validate(compose_train(*overrides))
    message = str(info.value)
    assert key in message
    if key in ("eval_view", "stage"):
        assert "choose one of" in message


def test_trainer_arguments_resolve_precision_and_accumulation(compose_train, monkeypatch):
    from fgkd.engine import resolve_trainer_args

    cfg = compose_train("scale=paper", "batch_size=8")  # the reference nominal batch 64
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_trainer_args(cfg)["precision"] == "32-true"
    assert resolve_trainer_args(cfg)["accumulate_grad_batches"] == 8  # round(64 / 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_trainer_args(cfg)["precision"] == "16-mixed"
    assert resolve_trainer_args(compose_train("trainer=cpu"))["precision"] == "32-true"
    assert resolve_trainer_args(compose_train("scale=paper", "batch_size=48"))["accumulate_grad_batches"] == 1
    assert resolve_trainer_args(compose_train("batch_size=8"))["accumulate_grad_batches"] == 1  # dev: nbs = batch


def test_wandb_logger_is_offline_without_credentials(compose_train, tmp_path, monkeypatch):
    from fgkd.engine import instantiate_loggers, wandb_has_credentials

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not wandb_has_credentials()
    cfg = compose_train("logger=wandb")
    (logger,) = instantiate_loggers(cfg.logger, tmp_path / "run")
    assert type(logger).__name__ == "WandbLogger" and logger._offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_has_credentials()
    (csv_logger,) = instantiate_loggers(compose_train().logger, tmp_path / "run")
    assert Path(csv_logger.save_dir) == tmp_path / "run"


def _read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    assert path.is_file(), f"no metrics.json in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    payload = json.loads(path.read_text())
    assert list(payload["metrics"]) == FIVE
    assert list(payload["display"]) == ["mAP", "mAP50", "mAR1", "mAR10", "mAR100"]
    assert all(-1.0 <= v <= 1.0 for v in payload["metrics"].values())
    return payload


def test_end_to_end_base_teacher_and_student_through_compose(compose_train, tmp_path):
    from fgkd.config import validate
    from fgkd.pipeline import run
    from fgkd.tasks.detect import DetectTask, load_detector

    evaluate = DetectTask().evaluate

    base_cfg = compose_train(*TINY, output_dir=tmp_path / "base")
    validate(base_cfg)
    base = run(base_cfg)
    payload = _read_metrics(tmp_path / "base")
    assert payload["role"] == "base" and payload["epoch"] == 0 and payload["run"]["kd"] == "none"
    assert base.best_ckpt is not None and base.best_ckpt.is_file()
    resumed = run(compose_train(*TINY, "epochs=2", f"ckpt_path={base.last_ckpt}", output_dir=tmp_path / "base"))
    assert [record["epoch"] for record in resumed.history] == [0, 1]  # epoch 0 from the run's val_history.json
    assert set(payload["per_class"]) <= {"corrosion", "damaged_insulation", "dent"}

    teacher_cfg = compose_train(*TINY, "stage=teacher", "preprocess=rb_sf", "eval_view=preprocessed",
                                output_dir=tmp_path / "teacher")
    validate(teacher_cfg)
    teacher_run = run(teacher_cfg)
    payload = _read_metrics(tmp_path / "teacher")
    assert (payload["role"], payload["run"]["view"], payload["run"]["val_view"]) == ("teacher", "preprocessed", "preprocessed")
    teacher, info = load_detector(teacher_run.artifact_path)
    assert info["class_names"] == ["corrosion", "damaged_insulation", "dent"]
    from_ckpt, _ = load_detector(teacher_run.best_ckpt)  # a Lightning checkpoint loads too (EMA weights)
    assert all(torch.equal(v, from_ckpt.state_dict()[k]) for k, v in teacher.state_dict().items())
    evaluated = evaluate(teacher_cfg, teacher, view="preprocessed")
    assert {f"val/{m}" for m in FIVE} <= set(evaluated)
    assert evaluated["val/map"] == pytest.approx(teacher_run.metrics["map"], abs=1e-6)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    # unfused, so its state_dict can be compared key by key (a fused teacher is restructured by design)
    student_cfg = compose_train(*TINY, "stage=student", "kd=cs", "alpha=0.5", "preprocess=rb_sf",
                                "kd.fuse_teacher=false", f"teacher.ckpt={teacher_run.artifact_path}",
                                output_dir=tmp_path / "student")
    validate(student_cfg)
    student_run = run(student_cfg).student
    payload = _read_metrics(tmp_path / "student")
    assert (payload["role"], payload["run"]["kd"], payload["run"]["alpha"]) == ("student", "cs", 0.5)
    assert payload["teacher"]["source"] == "teacher.ckpt"
    assert (tmp_path / "student" / "teacher" / "detector.pt").resolve() == Path(teacher_run.artifact_path).resolve()
    assert student_run.module.teacher is not None
    after = student_run.module.teacher.state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before)
    saved = torch.load(student_run.best_ckpt, map_location="cpu", weights_only=False)
    assert all(k.startswith(("student.", "distiller.connectors.")) for k in saved["state_dict"])


def test_full_kd_dispatches_to_the_pipeline(compose_train, tmp_path):
    from fgkd.pipeline import run

    cfg = compose_train(*TINY, "kd=cs", "preprocess=rb_sf", output_dir=tmp_path / "full")
    result = run(cfg)
    assert set(FIVE) <= set(result.metrics)
    assert result.metrics_path.is_file() and result.output_dir == (tmp_path / "full").resolve()


def test_train_py_subprocess_prints_the_five_metrics_and_writes_metrics_json(tmp_path, fgkd_cache):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FGKD_CACHE": str(fgkd_cache), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), *TINY, "trainer.enable_progress_bar=false",
               f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for header in ("mAP", "mAP50", "mAR1", "mAR10", "mAR100"):
        assert header in done.stdout
    assert f"run folder: {run_dir}" in done.stdout
    _read_metrics(run_dir)
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("model", [(), ("model=rtdetr_r18", "imgsz=128")], ids=["default", "rtdetr_r18"])
def test_ddp_spawn_on_cpu_writes_metrics(compose_train, tmp_path, model):
    """trainer=ddp_cpu (2 gloo processes via ddp_spawn): the best metrics come back through val_history.json; also
    for RT-DETR, whose denoising embedding must get a gradient on every rank."""
    from fgkd.pipeline import run

    cfg = compose_train(*TINY, "trainer=ddp_cpu", *model, output_dir=tmp_path / "ddp")
    result = run(cfg)
    payload = _read_metrics(tmp_path / "ddp")
    assert payload["epoch"] == 0 and set(FIVE) <= set(result.metrics)
    assert result.best_ckpt is not None and result.best_ckpt.is_file()


def test_run_and_sweep_dirs_resolve_before_hydra_runtime_exists(compose_train):
    """A multirun's sweeper resolves hydra.sweep.dir before any job's runtime config is set."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    compose_train()  # initializes Hydra on conf/
    HydraConfig.instance().cfg = None
    cfg = compose(config_name="train", return_hydra_config=True)
    assert "/outputs/multirun/" in str(cfg.hydra.sweep.dir)
    assert "/outputs/runs/" in str(cfg.hydra.run.dir)


@pytest.mark.slow
def test_multirun_over_alpha_reuses_the_teacher(tmp_path, fgkd_cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FGKD_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), "-m", *TINY, "trainer.enable_progress_bar=false",
               "kd=cs", "preprocess=rb_sf", "alpha=0.1,0.5", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reusing the cached teacher" in done.stdout
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()


def test_recipe_augmentation_reaches_the_datamodule_unless_overridden(compose_train):
    from fgkd.tasks.detect import DetectTask

    task = DetectTask()
    cfg = compose_train("model=yolov6s", "kd=none")
    datamodule = task.build_datamodule(cfg, "base")
    assert datamodule.augment.degrees == pytest.approx(0.373) and datamodule.close_mosaic == 15  # YOLOv6 recipe
    assert datamodule.teacher_view is None
    cfg = compose_train("model=yolov6s", "data.augment.degrees=0.0", "data.close_mosaic=0", "preprocess=rb_sf")
    datamodule = task.build_datamodule(cfg, "teacher")
    assert datamodule.augment.degrees == 0.0 and datamodule.close_mosaic == 0
    assert datamodule.augment.shear == pytest.approx(0.602)  # the rest still from the recipe
    assert (datamodule.preprocess, datamodule.teacher_view) == ("rb_sf", "preprocessed")
    with pytest.raises(ValueError, match="preprocess=rb_sf"):
        task.build_datamodule(compose_train("preprocess=none", "kd.teacher_view=preprocessed"), "student")


@pytest.mark.parametrize("script, override, key", [
    ("train.py", "alpha=-1", "alpha"), ("train.py", "imgsz=100", "imgsz"),
    ("train.py", "data=yolo data.root=/nonexistent/pdi", "/nonexistent"),
    ("train.py", "teacher.ckpt=/nonexistent/teacher.pt", "teacher.ckpt"),
    ("train.py", "task=anomaly data=mtd data.root=/nonexistent/mtd", "/nonexistent/mtd"),
    ("train.py", "task=anomaly model=bsdrd data.resize_mode=stretch", "data.resize_mode"),
    ("train.py", "task=anomaly model.encoder.weights=/nonexistent/w.pth", "model.encoder.weights"),
    ("predict.py", "ckpt=/nonexistent.pt source=.", "ckpt"),
])
def test_a_bad_value_is_one_message_exit_2_and_no_run_folder(tmp_path, script, override, key):
    """Issue 11 point 1: validated before any heavy import (see the sys.modules test below), one line, exit 2,
    and the default output folder (outputs/ under the working directory) gains nothing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    extra = ["kd=none"] if script == "train.py" and "task=anomaly" not in override and "teacher" not in override else []
    done = subprocess.run([sys.executable, str(REPO_ROOT / script), *override.split(), *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout and key in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error:")
    left = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] if (tmp_path / "outputs").exists() else []
    assert left == [] and not any((tmp_path / "outputs").glob("*/*")), left


VALIDATE_ONLY = """
import sys
from hydra import compose, initialize_config_dir
from fgkd.config import ConfigError, validate, validate_predict
with initialize_config_dir(sys.argv[1], version_base="1.3"):
    for overrides in ([], ["model=yolov6s", "kd=cs", "alpha=0.5"], ["task=anomaly", "model=bsdrd"],
                      ["task=anomaly", "data=synthtiles"], ["alpha=-1"]):
        try:
            validate(compose("train", overrides=overrides))
        except ConfigError:
            pass
    try:
        validate_predict(compose("predict", overrides=["ckpt=/nonexistent.pt", "source=."]))
    except ConfigError:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "torchvision", "timm", "cv2",
                                                             "torchmetrics", "scipy", "ptwt"))
print("HEAVY", heavy)
"""


def test_validation_imports_nothing_heavy():
    """Issue 11 point 1: the speed proxy — a validation-only call leaves torch, lightning, OpenCV unimported."""
    done = subprocess.run([sys.executable, "-c", VALIDATE_ONLY, str(REPO_ROOT / "conf")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY []" in done.stdout, done.stdout


def test_light_vocabularies_equal_the_registries():
    """fgkd.options and fgkd.tasks.checks repeat names that the heavy modules register: they must agree."""
    from fgkd.distill.losses import KD_LOSSES
    from fgkd.options import KD_NAMES
    from fgkd.tasks import get_task, list_tasks
    from fgkd.tasks.checks import SPECS

    assert tuple(sorted(KD_LOSSES)) == KD_NAMES
    assert sorted(SPECS) == list_tasks()
    for name, spec in SPECS.items():
        task = get_task(name)
        assert tuple(task.metric_columns) == spec.metric_columns and dict(task.display_names) == dict(spec.display_names)


def test_logs_get_one_line_per_epoch_with_the_total_and_an_estimate(tmp_path, tiny_synthpipes):
    """Issue 11.2: non-interactive logs were carriage-return bar lines reading `Epoch 11` with no total."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *TINY, "epochs=2",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert (tmp_path / "run" / "results.png").stat().st_size > 2000  # the metrics per epoch (issue 11.5)
    assert all("map " in line and "eta " in line and "loss " in line for line in lines)
    assert "\r" not in done.stdout and "\r" not in done.stderr


def test_a_two_stage_run_names_its_stages_and_estimates_the_whole_run(tmp_path, tiny_synthpipes):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    overrides = [o for o in TINY if o != "kd=none"] + ["kd=cs", f"paths.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "[detect] teacher fit: yolov8n" in out and "[detect] student fit: yolov8n" in out
    teacher = [line for line in out.splitlines() if line.startswith("teacher 1/2 · epoch 1/1")]
    student = [line for line in out.splitlines() if line.startswith("student 2/2 · epoch 1/1")]
    assert len(teacher) == 1 and "run eta" in teacher[0] and len(student) == 1 and "run eta" not in student[0]
    assert "Total FLOPs" not in out
