"""Adapters for heterogeneous teacher/student pairs: a 1×1 conv per tap mapping student → teacher channels.

When the teacher is wider than the student (e.g. teacher yolov6l, student yolov6n), paired maps share
stride but not channel count. Following HEAD's FitNet baseline (kd_losses.md §4: ``Conv2d(k=1)``, no
BN/ReLU), each such tap gets a learnable 1×1 conv on the *student* side; taps whose channels already match
get ``nn.Identity`` (no parameters, so a homogeneous pair adds nothing to the optimizer or to DDP's
bucket).

Where they live: in the distillation LightningModule (e.g. ``self.kd_adapters``), never inside the
detector. They are trained with the student (the module's optimizer must include them, kd_losses.md
§6.4.4) but are not part of the exported student, its EMA or ``predict.py``: inference never runs them.

    channels_s = probe_channels(student, names)
    channels_t = probe_channels(teacher, names)
    self.kd_adapters = build_adapters(channels_s, channels_t)
    ...
    loss = kd_loss(apply_adapters(self.kd_adapters, student_feats), teacher_feats)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fgkd.distill.taps import probe_channels, probe_shapes

__all__ = ["apply_adapters", "build_adapters", "probe_channels", "probe_shapes"]


def build_adapters(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """One module per tap: ``Conv2d(c_s, c_t, 1)`` (with bias) where channels differ, ``nn.Identity`` where equal."""
    if len(student_channels) != len(teacher_channels):
        raise ValueError(
            f"build_adapters: {len(student_channels)} student taps vs {len(teacher_channels)} teacher taps "
            f"(channels {list(student_channels)} vs {list(teacher_channels)}); tap both models at the same layers"
        )
    adapters = nn.ModuleList()
    for index, (c_s, c_t) in enumerate(zip(student_channels, teacher_channels, strict=True)):
        if int(c_s) < 1 or int(c_t) < 1:
            raise ValueError(f"build_adapters: tap {index} has non-positive channels ({c_s} -> {c_t})")
        adapters.append(nn.Identity() if c_s == c_t else nn.Conv2d(int(c_s), int(c_t), kernel_size=1))
    return adapters


def apply_adapters(adapters: nn.ModuleList, student_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Map each student feature through its adapter (tap order)."""
    if len(adapters) != len(student_feats):
        raise ValueError(
            f"apply_adapters: {len(adapters)} adapters for {len(student_feats)} student features"
        )
    return [adapter(feature) for adapter, feature in zip(adapters, student_feats, strict=True)]
