"""Connectors for heterogeneous teacher/student pairs: a 1×1 conv per tap mapping student → teacher channels.

When the teacher is wider than the student (e.g. teacher yolov6l, student yolov6n), paired maps share
stride but not channel count. Following HEAD's FitNet baseline (kd_losses.md §4: ``Conv2d(k=1)``, no
BN/ReLU), each such tap gets a learnable 1×1 conv on the *student* side; taps whose channels already match
get ``nn.Identity`` (no parameters, so a homogeneous pair adds nothing to the optimizer or to DDP's
bucket).

Where they live: in the :class:`fgkd.distill.distiller.Distiller` (``distiller.connectors``), never inside
the detector. They are trained with the student (the module's optimizer includes them, kd_losses.md
§6.4.4) but are not part of the exported student, its EMA or ``predict.py``: inference never runs them.
The channel counts come from the detectors' declared taps (``TapInfo.channels``), not from a probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["apply_connectors", "build_connectors"]


def build_connectors(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """One module per tap: ``Conv2d(c_s, c_t, 1)`` (with bias) where channels differ, ``nn.Identity`` where equal."""
    if len(student_channels) != len(teacher_channels):
        raise ValueError(
            f"build_connectors: {len(student_channels)} student taps vs {len(teacher_channels)} teacher taps "
            f"(channels {list(student_channels)} vs {list(teacher_channels)}); tap both models at as many layers"
        )
    connectors = nn.ModuleList()
    for index, (c_s, c_t) in enumerate(zip(student_channels, teacher_channels, strict=True)):
        if int(c_s) < 1 or int(c_t) < 1:
            raise ValueError(f"build_connectors: tap {index} has non-positive channels ({c_s} -> {c_t})")
        connectors.append(nn.Identity() if c_s == c_t else nn.Conv2d(int(c_s), int(c_t), kernel_size=1))
    return connectors


def apply_connectors(connectors: nn.ModuleList, student_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Map each student feature through its connector (tap order)."""
    if len(connectors) != len(student_feats):
        raise ValueError(f"apply_connectors: {len(connectors)} connectors for {len(student_feats)} student features")
    return [connector(feature) for connector, feature in zip(connectors, student_feats, strict=True)]
