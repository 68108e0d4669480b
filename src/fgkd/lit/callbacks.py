"""Training callbacks: YOLO-style EMA of the student's weights and closing mosaic for the last epochs.

* :class:`YoloEMA` is Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` (library first:
  it swaps the averaged weights in for validation, writes them to the checkpoint's ``state_dict`` and copies
  them into the model when training ends) with the reference ramp ``decay * (1 - exp(-updates / tau))``,
  ``decay`` 0.9999, ``tau`` 2000 (detectors.md §2.3/§3.3: "EMA is on" in both reference trainers), updated
  once per optimizer step. It averages every parameter and buffer *registered* on the LightningModule; the
  frozen teacher is not registered (see :class:`fgkd.lit.detection.FrozenTeacher`), so it is never averaged,
  swapped or copied.
* :class:`CloseMosaic` calls ``datamodule.set_mosaic(False)`` for the last N epochs (Ultralytics
  ``close_mosaic`` 10, YOLOv6 ``stop_aug_last_n_epoch`` 15).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn


class RampEMA:
    """``avg_fn`` for ``AveragedModel``: EMA whose decay ramps up as ``decay * (1 - exp(-updates / tau))``.

    ``AveragedModel`` copies the model on its first update and passes ``num_averaged`` = 1, 2, … afterwards,
    so after k optimizer steps ``updates = num_averaged + 1 = k`` as in the reference EMA. A class (not a
    closure) so it pickles for ``ddp_spawn``.
    """

    def __init__(self, decay: float = 0.9999, tau: float = 2000.0) -> None:
        if not 0.0 <= decay < 1.0 or tau <= 0:
            raise ValueError(f"EMA decay must be in [0, 1) and tau > 0, got decay={decay}, tau={tau}")
        self.decay = float(decay)
        self.tau = float(tau)

    def decay_at(self, updates: float) -> float:
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor | int) -> torch.Tensor:
        if not averaged.is_floating_point():  # e.g. BatchNorm's num_batches_tracked: follow the model
            return current
        decay = self.decay_at(float(num_averaged) + 1.0)
        return averaged * decay + current * (1.0 - decay)

    def multi(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        """``multi_avg_fn`` for ``AveragedModel``: the same update in place, one foreach kernel per tensor group
        (``AveragedModel`` groups by device and dtype) instead of a Python loop over ~400 tensors; the decay is
        computed on the tensors' device, so CUDA runs need no host sync."""
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        updates = num_averaged.to(torch.float32) + 1.0
        decay = self.decay * (1.0 - torch.exp(-updates / self.tau))
        torch._foreach_lerp_(averaged, current, (1.0 - decay).to(averaged[0].dtype))


class YoloEMA(WeightAveraging):
    """EMA of the LightningModule's registered weights and buffers, with the reference ramp (see module doc)."""

    def __init__(self, decay: float = 0.9999, tau: float = 2000.0, device: Any = None, use_buffers: bool = True) -> None:
        self.ramp = RampEMA(decay, tau)
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=self.ramp.multi)


class CloseMosaic(Callback):
    """Switch mosaic off (``datamodule.set_mosaic(False)``) for the last ``last_epochs`` epochs.

    Called at ``on_fit_start`` too, because the first epoch's loader iterator is created before
    ``on_train_epoch_start``; later epochs create their iterator after it. Loaders with
    ``persistent_workers=True`` keep the old dataset copy in their workers: the datamodule's ``set_mosaic``
    must handle that (e.g. rebuild its loader).
    """

    def __init__(self, last_epochs: int = 10) -> None:
        if int(last_epochs) < 0:
            raise ValueError(f"close_mosaic must be >= 0, got {last_epochs}")
        self.last_epochs = int(last_epochs)
        self.closed = False

    def _maybe_close(self, trainer: pl.Trainer, epoch: int) -> None:
        if self.closed or self.last_epochs == 0 or trainer.max_epochs is None or trainer.max_epochs < 0:
            return
        if epoch >= trainer.max_epochs - self.last_epochs:
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "set_mosaic"):
                rank_zero_warn("CloseMosaic: the datamodule has no set_mosaic(bool); mosaic left as configured")
            else:
                datamodule.set_mosaic(False)
                rank_zero_info(f"CloseMosaic: mosaic off from epoch {epoch} (last {self.last_epochs} epochs)")
            self.closed = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_close(trainer, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_close(trainer, trainer.current_epoch)
