"""The frozen teacher: eval mode, no gradients, never a registered sub-module of the student's module.

Held as a plain attribute (not an ``nn.Module`` child), it is never in ``parameters()`` (optimizer, DDP
buckets, EMA), ``state_dict()`` (checkpoints), ``.train()`` (Lightning's mode switches) or SyncBatchNorm
conversion; its owner moves it with ``.to(device)`` explicitly (``Distiller._apply``). It runs under
``torch.no_grad()``, not ``inference_mode``: its features are saved for the student's backward
(ecosystem.md §3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fgkd.distill.taps import FeatureTaps


class FrozenTeacher:
    """A frozen model. ``copy.deepcopy`` returns the same object: the EMA callback deep-copies the
    LightningModule, and the teacher must be shared by that copy rather than duplicated (it never changes)."""

    def __init__(self, model: nn.Module, fuse: bool = False) -> None:
        if fuse and callable(getattr(model, "fuse", None)):
            # Conv+BN folding (and RepVGG re-parameterisation for YOLOv6): the same eval-mode outputs, a
            # ~20 % cheaper teacher forward (benchmarks/kd_overhead.py --fuse-teacher). fuse() builds new
            # convs, so the freezing below must come after it.
            model.fuse()
        model.eval()
        model.requires_grad_(False)
        self.model = model

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenTeacher:
        return self

    def forward(self, images: torch.Tensor, tap_names: Sequence[str] | None = None,
                need_output: bool = True) -> tuple[Any, list[torch.Tensor]]:
        """``(raw, tapped features)`` for ``images``, in eval mode and without autograd.

        ``need_output=False`` (feature KD): the forward stops once the last tap fired, ``raw`` is None. With
        backbone taps a YOLO teacher then skips its neck and head, ~half of its forward (the KD step's only
        addition; benchmarks/kd_overhead.py)."""
        self.model.eval()  # defensive: nothing may have switched it back to train mode
        with torch.no_grad():
            if tap_names:
                raw = None
                with FeatureTaps(self.model, tap_names, stop_when_complete=not need_output) as taps:
                    raw = self.model(images)
                return raw, taps.features
            return self.model(images), []
