"""Where the wall time of a fit goes: training steps, waiting for batches, validation, and the rest.

:class:`TimeBreakdown` times, inside ``trainer.fit``, every training step (``on_train_batch_start`` →
``on_train_batch_end``: forward, loss, backward, optimizer; on CUDA the step's kernels are awaited, so the figure
is the step's, not its launch), the wait for each batch (the end of one step to the start of the next: data
loading), and every validation pass (BatchNorm recalibration, the forward passes, metric computation). The
engine adds the time before ``trainer.fit`` (building data and model) and after it (export, pictures, test
split) and prints one line per fit, also stored in ``metrics.json["timing"]`` (issue 12: ≥ 85 % should be
training steps)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch


def _sync(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class TimeBreakdown(pl.Callback):
    def __init__(self) -> None:
        self.seconds = {"train_steps": 0.0, "data_wait": 0.0, "validation": 0.0}
        self.fit_seconds = 0.0
        self._fit_start = self._step_start = self._val_start = 0.0
        self._last_step_end: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step_end = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_step_end is not None:
            self.seconds["data_wait"] += now - self._last_step_end
        self._step_start = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        _sync(pl_module)
        now = time.perf_counter()
        self.seconds["train_steps"] += now - self._step_start
        self._last_step_end = now

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step_end = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()
        self._last_step_end = None  # validation inside an epoch is not data wait

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module)
        self.seconds["validation"] += time.perf_counter() - self._val_start


def breakdown(callback: TimeBreakdown, before_fit: float, after_fit: float) -> dict[str, Any]:
    """``{"total_s", "shares": {part: fraction}, "seconds": {part: s}}`` of one fit (module docstring)."""
    inside = callback.seconds
    other_in_fit = max(callback.fit_seconds - sum(inside.values()), 0.0)  # epoch ends, checkpoints, logging
    seconds = {**inside, "checkpoints_logging_other": other_in_fit, "setup": before_fit, "export_and_test": after_fit}
    total = sum(seconds.values())
    return {"total_s": round(total, 2), "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "shares": {k: round(v / total, 4) if total > 0 else 0.0 for k, v in seconds.items()}}


def format_breakdown(role: str, timing: dict[str, Any]) -> str:
    names = {"train_steps": "training steps", "data_wait": "waiting for data", "validation": "validation",
             "checkpoints_logging_other": "checkpoints/logging/epoch ends", "setup": "set-up",
             "export_and_test": "export/figures/test"}
    parts = ", ".join(f"{names[k]} {100 * v:.1f} %" for k, v in timing["shares"].items())
    return f"[time] {role} fit {timing['total_s']:.0f} s: {parts}"
