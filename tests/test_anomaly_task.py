"""task=anomaly end to end: train.py on tiny SynthTex, metrics.json, pictures, the exported model, category=all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["image_auroc", "pixel_auroc", "aupro"]
TINY = [
    "task=anomaly", "scale=smoke", "epochs=1", "batch_size=4", "num_workers=0", "logger=none",
    "data.synthtex.categories=[woven,washer]", "data.synthtex.size=64", "data.synthtex.num_train=8",
    "data.synthtex.num_test_good=3", "data.synthtex.num_test_per_defect=2",
]
SMALL_RD = ["model=rd", "model.encoder.name=resnet18", "model.oce_blocks=1"]
SMALL_RD2T = ["model=rd2t", "model.encoder.name=resnet18", "model.encoder2.name=resnet18", "model.oce_blocks=1"]


def test_train_py_anomaly_prints_the_metrics_beside_the_baseline_and_exports_a_faithful_model(tmp_path, fgkd_cache):
    from fgkd.engine import read_metrics
    from fgkd.metrics.anomaly import anomaly_metrics
    from fgkd.tasks.anomaly import load_anomaly_model

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *TINY, *SMALL_RD,
                           "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "I-AUROC" in done.stdout and "P-AUROC" in done.stdout and "AUPRO" in done.stdout
    assert "trivial baseline" in done.stdout
    payload = read_metrics(run / "metrics.json")
    assert payload["task"] == "anomaly" and payload["role"] == "base" and set(payload["metrics"]) == set(COLUMNS)
    assert all(0.0 <= payload["metrics"][c] <= 1.0 for c in COLUMNS)
    assert set(payload["extras"]["baseline"]) == set(COLUMNS)
    assert payload["run"]["category"] == "woven" and payload["run"]["imagenet_weights"] is False
    for picture in ("maps.png", "score_histogram.png"):
        assert (run / picture).stat().st_size > 1000

    # the exported model reproduces the reported metrics on the same test split
    model, info = load_anomaly_model(run / "anomaly.pt")
    assert info["imgsz"] == 64 and info["data"] == {"layout": "synthtex", "category": "woven", "resize_mode": "square"}
    from fgkd.data.anomaly_datamodule import AnomalyDataModule

    dm = AnomalyDataModule("synthtex", category="woven", imgsz=64, num_workers=0, cache_root=str(fgkd_cache),
                           synthtex={"categories": ["woven", "washer"], "size": 64, "num_train": 8,
                                     "num_test_good": 3, "num_test_per_defect": 2})
    test = dm.test_set
    batch = [test[i] for i in range(len(test))]
    maps, _ = model.predict(torch.stack([b["images"] for b in batch]))
    again = anomaly_metrics(maps, torch.stack([b["masks"] for b in batch]).bool(), torch.stack([b["labels"] for b in batch]))
    for column in COLUMNS:
        assert again[column] == pytest.approx(payload["metrics"][column], abs=1e-5)
    # thresholds stored with the model: F1-optimal on the evaluated split, as f1_optimal_threshold computes them
    from fgkd.metrics.anomaly import f1_optimal_threshold

    labels = torch.stack([b["labels"] for b in batch])
    assert info["threshold"] == pytest.approx(f1_optimal_threshold(maps.flatten(1).amax(1), labels)[0], abs=1e-5)
    assert info["pixel_threshold"] == pytest.approx(
        f1_optimal_threshold(maps, torch.stack([b["masks"] for b in batch]).bool())[0], rel=1e-4)

    # predict.py on a folder without labels: one score per image, the model's own score, heat-map PNGs
    folder = test.samples[0].image.parent
    done = subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), f"ckpt={run / 'anomaly.pt'}",
                           f"source={folder}", "threshold=0.5", f"hydra.run.dir={tmp_path / 'pred'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    predictions = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    files = sorted(folder.glob("*.png"))
    assert [Path(r["image"]).name for r in predictions["images"]] == [f.name for f in files]
    assert predictions["imgsz"] == 64 and all("defective" in r for r in predictions["images"])
    first = next(i for i, s in enumerate(test.samples) if s.image == files[0])
    assert predictions["images"][0]["score"] == pytest.approx(float(maps[first].max()), abs=1e-4)
    assert len(list((tmp_path / "pred" / "images").glob("*.png"))) == len(files)
    # the model's pixel threshold gives a defect mask per image, at the image's own size
    assert predictions["pixel_threshold"] == pytest.approx(info["pixel_threshold"])
    masks = sorted((tmp_path / "pred" / "masks").glob("*.png"))
    assert [m.name for m in masks] == [f.with_suffix(".png").name for f in files]
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == cv2.imread(str(files[0])).shape[:2] and set(np.unique(mask)) <= {0, 255}


def test_category_all_trains_one_model_per_category_averages_and_resumes(compose_train, capsys):
    from fgkd.config import validate
    from fgkd.engine import read_metrics
    from fgkd.pipeline import ExpandedResult, run

    cfg = compose_train(*TINY, *SMALL_RD2T, "data.category=all", "trainer.enable_progress_bar=false")
    validate(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(cfg)
    assert isinstance(result, ExpandedResult) and list(result.per_class) == ["woven", "washer"]
    out = Path(cfg.paths.output_dir)
    parts = {c: read_metrics(out / c / "metrics.json")["metrics"] for c in ("woven", "washer")}
    for column in COLUMNS:
        assert result.metrics[column] == pytest.approx(sum(p[column] for p in parts.values()) / 2)
    payload = read_metrics(out / "metrics.json")
    groups = payload["extras"]["group_means"]
    assert groups["texture"]["image_auroc"] == pytest.approx(parts["woven"]["image_auroc"])
    assert groups["mean_of_groups"]["aupro"] == pytest.approx((parts["woven"]["aupro"] + parts["washer"]["aupro"]) / 2)
    assert payload["per_class"]["washer"] == parts["washer"]
    stamp = (out / "woven" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    run(cfg)  # a second start: every part is finished and skipped
    assert "finished earlier" in capsys.readouterr().out
    assert (out / "woven" / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("overrides", "match"), [
    (["data=mvtec"], "data.root"),
    (["stage=teacher"], "one stage"),
    (["imgsz=80"], "imgsz"),
    (["model.name=patchcore"], "not an anomaly model"),
])
def test_bad_anomaly_configs_name_the_key(compose_train, overrides, match):
    from fgkd.config import ConfigError, validate

    with pytest.raises(ConfigError, match=match):
        validate(compose_train("task=anomaly", *overrides))


def test_the_anomaly_presets_compose(compose_train):
    from fgkd.config import validate

    cfg = compose_train("task=anomaly")
    settings = validate(cfg)
    assert (settings.task, settings.model, cfg.data.layout, cfg.data.category) == ("anomaly", "rd2t", "synthtex", "woven")
    assert cfg.kd.name == "none" and list(cfg.callbacks) == ["last_checkpoint"]  # no EMA / mosaic / best-by-test
    assert (cfg.imgsz, cfg.epochs) == (128, 4)  # conf/scale_preset/anomaly_dev.yaml
    assert cfg.model.recipe.optimizer.lr == 0.005 and list(cfg.model.recipe.optimizer.betas) == [0.5, 0.999]
    assert cfg.model.recipe.scheduler.name == "cosine" and cfg.model.recipe.scheduler.t_max == 32
    rd = compose_train("task=anomaly", "model=rd", "scale=paper")
    assert (rd.model.decoder, rd.model.loss, rd.model.recipe.scheduler.name) == ("de_resnet", "flat", "none")
    assert (rd.imgsz, rd.epochs, rd.batch_size) == (256, 200, 16)
    assert list(cfg.metrics) == COLUMNS and cfg.optimized_metric == "val/image_auroc"


def test_ddp_validation_gathers_the_whole_test_set_once(tmp_path, fgkd_cache):
    """2 CPU processes (gloo, ddp_spawn): each rank maps its shard of the 9 test images (the sampler pads one
    repeat); the gathered, de-duplicated metrics equal one process's metrics of the final model on the full set."""
    from fgkd.data.anomaly_datamodule import AnomalyDataModule
    from fgkd.engine import read_metrics
    from fgkd.metrics.anomaly import anomaly_metrics
    from fgkd.tasks.anomaly import load_anomaly_model

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *TINY, *SMALL_RD, "trainer=ddp_cpu",
                           "batch_size=2", "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false",
                           f"hydra.run.dir={run}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reported = read_metrics(run / "metrics.json")["metrics"]
    model, _ = load_anomaly_model(run / "anomaly.pt")
    dm = AnomalyDataModule("synthtex", category="woven", imgsz=64, num_workers=0, cache_root=str(fgkd_cache),
                           synthtex={"categories": ["woven", "washer"], "size": 64, "num_train": 8,
                                     "num_test_good": 3, "num_test_per_defect": 2})
    test = dm.test_set
    assert len(test) == 9
    batch = [test[i] for i in range(len(test))]
    maps, _ = model.predict(torch.stack([b["images"] for b in batch]))
    expected = anomaly_metrics(maps, torch.stack([b["masks"] for b in batch]).bool(), torch.stack([b["labels"] for b in batch]))
    for column in COLUMNS:
        assert reported[column] == pytest.approx(expected[column], abs=1e-5)


def test_a_stopped_run_resumes_from_its_last_checkpoint(compose_train):
    """ckpt_path=auto: a 1-epoch run continued to 2 epochs keeps epoch 0's record and trains only epoch 1."""
    from fgkd.engine import read_metrics
    from fgkd.pipeline import run

    first = compose_train(*TINY, *SMALL_RD, "trainer.enable_progress_bar=false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(first)
        out = Path(first.paths.output_dir)
        epoch0 = read_metrics(out / "metrics.json")["history"]
        resumed = compose_train(*TINY, *SMALL_RD, "trainer.enable_progress_bar=false", "epochs=2", "ckpt_path=auto")
        run(resumed)
    history = read_metrics(out / "metrics.json")["history"]
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[0] == epoch0[0]
    assert read_metrics(out / "metrics.json")["epoch"] == 1  # the last epoch is the reported one
