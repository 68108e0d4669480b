"""Progress of a fit: the stage and ``epoch k/N`` on the bar, and one line per epoch in logs.

* :class:`StageProgressBar` — tqdm bar whose description reads ``teacher · epoch 12/30`` (Lightning's says
  ``Epoch 11`` with no total and restarts at 0 for the next stage without saying which);
* :class:`EpochLines` — one plain line per epoch (stage, epoch k/N, seconds, training loss, the
  task's first metrics, an estimate of the fit's remaining time). Used instead of the bar when stdout is not a
  terminal (a log file: no carriage-return bar lines), and beside it otherwise only when the bar is off.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


def _epoch_label(stage: str, trainer: pl.Trainer) -> str:
    total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
    return f"{stage + ' · ' if stage else ''}epoch {trainer.current_epoch + 1}/{total}"


class StageProgressBar(TQDMProgressBar):
    def __init__(self, stage: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(_epoch_label(self.stage, trainer))


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class EpochLines(pl.Callback):
    """``later_epochs``: epochs of the stages still to come (the student after a teacher), counted into the
    estimate at this stage's pace, so the teacher's lines estimate the whole run."""

    def __init__(self, stage: str = "", metrics: tuple[str, ...] = (), later_epochs: int = 0) -> None:
        self.stage, self.metrics, self.later_epochs = stage, tuple(metrics), int(later_epochs)
        self._fit_start = self._epoch_start = time.monotonic()
        self._first_epoch: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.monotonic()
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the epoch's validation (Lightning runs it inside the training epoch), so its metrics are logged
        if not trainer.is_global_zero:
            return
        values = trainer.callback_metrics
        parts = [_epoch_label(self.stage, trainer), f"{time.monotonic() - self._epoch_start:.0f}s"]
        for key in ("train/loss_epoch", "train/loss"):
            if key in values:
                parts.append(f"loss {float(values[key]):.4g}")
                break
        for name in self.metrics:
            if f"val/{name}" in values:
                parts.append(f"{name} {float(values[f'val/{name}']):.3f}")
        done = trainer.current_epoch + 1 - (self._first_epoch or 0)
        left = (trainer.max_epochs or 0) - trainer.current_epoch - 1
        if done > 0 and left >= 0:
            pace = (time.monotonic() - self._fit_start) / done
            parts.append(f"eta {_format_eta(pace * left)}")
            if self.later_epochs:
                parts.append(f"run eta {_format_eta(pace * (left + self.later_epochs))}")
        print("  ".join(parts), flush=True)
