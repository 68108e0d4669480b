"""Non-finite training stops loudly: the loss guard, the checkpoint and export checks, and train.py's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fgkd.lit.guards import NonFiniteError, NonFiniteLossGuard, check_finite_state

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_loss_guard_passes_finite_losses_skips_a_bounded_number_then_stops():
    guard = NonFiniteLossGuard()
    where = lambda: (2, 7, "/runs/x/checkpoints")  # noqa: E731
    assert guard.skip(torch.tensor(1.5), lambda: pytest.fail("asked for the context of a finite loss")) is False
    with pytest.raises(NonFiniteError, match=r"non-finite training loss \(nan\) at epoch 2, step 7.*/runs/x/checkpoints"
                                             r".*ckpt_path=auto"):
        guard.skip(torch.tensor(float("nan")), where)
    lenient = NonFiniteLossGuard(max_skips=2)
    assert lenient.skip(torch.tensor(float("inf")), where) is True
    assert lenient.skip(torch.tensor(float("nan")), where) is True
    with pytest.raises(NonFiniteError):
        lenient.skip(torch.tensor(float("nan")), where)


def test_no_checkpoint_or_export_with_non_finite_weights(tmp_path):
    from fgkd.models.detectors.base import build_detector
    from fgkd.tasks.detect import save_detector

    detector = build_detector("yolov8n", 1)
    save_detector(tmp_path / "good.pt", detector, {"name": "yolov8n", "num_classes": 1, "kwargs": {}}, ["a"])
    before = (tmp_path / "good.pt").read_bytes()
    with torch.no_grad():
        next(detector.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="tensors are not finite"):
        save_detector(tmp_path / "good.pt", detector, {"name": "yolov8n", "num_classes": 1, "kwargs": {}}, ["a"])
    assert (tmp_path / "good.pt").read_bytes() == before  # the earlier file is kept
    with pytest.raises(NonFiniteError, match="checkpoint"):
        check_finite_state({"w": torch.tensor([1.0, float("inf")])}, "checkpoint at epoch 3")


def test_the_detection_module_stops_before_backward_on_a_nan_loss(monkeypatch):
    from fgkd.lit.detection import DetectionModule
    from fgkd.models.detectors.base import build_detector

    module = DetectionModule(build_detector("yolov8n", 1), class_names=["a"])
    monkeypatch.setattr(module, "compute_loss", lambda batch: (torch.tensor(float("nan")), {"train/loss": torch.tensor(0.0)}))
    with pytest.raises(NonFiniteError):
        module.training_step({"images": torch.zeros(1, 3, 32, 32)}, 0)
    module.nonfinite = NonFiniteLossGuard(max_skips=1)
    assert module.training_step({"images": torch.zeros(1, 3, 32, 32)}, 0) is None  # skipped: no optimizer step


def test_train_py_exits_non_zero_and_exports_nothing_when_the_loss_diverges(tmp_path, tiny_synthpipes):
    """Issue 15.6: lr 1e6 used to train on NaN losses, export a NaN detector.pt and exit 0."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), "kd=none", "imgsz=64", "epochs=3", "batch_size=2",
               "num_workers=0", "logger=none", "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
               "model.recipe.optimizer.lr=1e9", "model.recipe.optimizer.name=sgd",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    # the loss guard (a NaN loss) or the checkpoint guard (weights that went inf before the loss did)
    assert "non-finite training loss" in output or "tensors are not finite" in output, output[-2000:]
    assert not (run / "detector.pt").exists() and not (run / "metrics.json").exists()
