"""Per-epoch validation records and the best one, kept by every task's LightningModule.

The engine (``fgkd.engine.fit``) reads ``module.history`` after a fit: its ``best`` record gives the run's
metrics and best epoch. The records are also written (atomically, rank 0) to ``history_path`` after each
validation epoch, so they survive ``ddp_spawn`` (whose workers' Python attributes never come back to the
main process), crashes and resumes (a resumed fit reloads the earlier epochs from that file).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from fgkd.io import atomic_write_json, read_json


class ValidationHistory:
    """``records`` (one dict per validation epoch, sanity check excluded) and ``best`` by ``monitor``.

    Args:
        monitor: the scalar key that ranks epochs (e.g. ``"map"``); ``mode``: ``"max"``, ``"min"`` or ``"last"``
            (the latest record is the reported one: no epoch is chosen on the evaluation set, the anomaly
            protocol where the test set is the only labelled split).
        path: the JSON file ``{"history": [...], "best": {...}}`` rewritten after every record (None: memory only).
    """

    def __init__(self, monitor: str, mode: str = "max", path: str | os.PathLike[str] | None = None) -> None:
        if mode not in ("max", "min", "last"):
            raise ValueError(f"ValidationHistory mode must be 'max', 'min' or 'last', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    def _better(self, value: float, than: float) -> bool:
        if self.mode == "last":
            return True
        if math.isnan(value):
            return False
        if math.isnan(than):
            return True
        return value > than if self.mode == "max" else value < than

    def record(self, epoch: int, step: int, scalars: Mapping[str, float], *, write: bool = True) -> dict[str, Any]:
        """Add one epoch's scalars; the first record, or one that beats ``best`` on ``monitor``, becomes best."""
        if self.monitor not in scalars:
            raise KeyError(f"validation scalars have no {self.monitor!r} (the monitored metric); got {sorted(scalars)}")
        record = {"epoch": int(epoch), "step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self.records.append(record)
        if self.best is None or self._better(record[self.monitor], self.best[self.monitor]):
            self.best = record
        if write and self.path is not None:
            atomic_write_json(self.path, {"history": self.records, "best": self.best})
        return record

    def load(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Replace the records with those saved at ``path`` (default: ``self.path``); False when there is no file."""
        source = Path(path) if path is not None else self.path
        if source is None or not source.is_file():
            return False
        saved = read_json(source)
        self.records, self.best = list(saved.get("history", [])), saved.get("best")
        return True


class TrainLossesToHistory(pl.Callback):
    """Adds each epoch's training loss parts (``train/*``, the epoch means Lightning aggregates) to that epoch's
    validation record, so ``metrics.json`` history and ``results.png`` show losses beside metrics. Validation
    runs before ``on_train_epoch_end``, so the last record is this epoch's when it was validated."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = getattr(pl_module, "history", None)
        if not isinstance(history, ValidationHistory) or not history.records:
            return
        record = history.records[-1]
        if record.get("epoch") != trainer.current_epoch:
            return
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and not key.endswith("_step") and key not in ("train/lr", "train/alpha"):
                try:
                    record[key.removesuffix("_epoch")] = float(value)
                except (TypeError, ValueError):
                    continue
        if trainer.is_global_zero and history.path is not None:
            atomic_write_json(history.path, {"history": history.records, "best": history.best})
