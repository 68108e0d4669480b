"""The distiller: student taps, teacher taps, connectors and the KD loss, chosen separately (as mmrazor
separates recorders, connectors and losses).

``Distiller(student, teacher, loss, student_taps=…, teacher_taps=…, layers=…)``:

* **taps** — ``kd.taps`` names the student's points (null: its ``default_taps``), ``kd.teacher_taps`` the
  teacher's (null: the same names as ``kd.taps`` when given, else the teacher's own ``default_taps``);
  ``kd.layers`` = K keeps the last K of each (Eq. 5-6). Pairs must have equal strides (a clear error
  otherwise); channels may differ.
* **connectors** — a 1×1 conv per pair whose channels differ (``fgkd.distill.connectors``), on the student
  side; channels and strides come from the detectors' declared ``TapInfo``, no probe forward pass.
* **loss** — a ``fgkd.distill.losses.KDLoss``: ``Σ_k d(F_S^k, F_T^k)`` over the pairs (Eq. 8), or on the
  logits (``kd_logits``) for ``kd=kl``.

The teacher is a :class:`fgkd.distill.frozen.FrozenTeacher` (never a registered sub-module); the
connectors are (they train with the student and live in its checkpoints as ``distiller.connectors.*``,
never in the exported detector).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from fgkd.distill.connectors import apply_connectors, build_connectors
from fgkd.distill.frozen import FrozenTeacher
from fgkd.distill.taps import FeatureTaps, select_taps, tap_geometry


class Distiller(nn.Module):
    """Records the student's taps, runs the frozen teacher, maps channels and returns ``(kd_total, per-pair terms)``."""

    def __init__(
        self,
        student: nn.Module,
        teacher: FrozenTeacher,
        loss: nn.Module,
        *,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        layers: int | None = None,
        connectors: bool = True,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.loss = loss
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []
        self.connectors = nn.ModuleList()
        if loss.uses_logits:
            self.names = ["logits"]
            return
        self.student_taps = select_taps(student, student_taps, layers)
        chosen_teacher = teacher_taps if teacher_taps is not None else student_taps
        self.teacher_taps = select_taps(teacher.model, chosen_teacher, layers)
        if len(self.student_taps) != len(self.teacher_taps):
            raise ValueError(f"kd: {len(self.student_taps)} student taps {self.student_taps} vs {len(self.teacher_taps)} "
                             f"teacher taps {self.teacher_taps}; pair them one to one with kd.taps / kd.teacher_taps")
        student_geometry = tap_geometry(student, self.student_taps)
        teacher_geometry = tap_geometry(teacher.model, self.teacher_taps)
        for s_name, t_name, (_, s_stride), (_, t_stride) in zip(
                self.student_taps, self.teacher_taps, student_geometry, teacher_geometry, strict=True):
            if s_stride != t_stride:
                raise ValueError(f"kd: student tap {s_name!r} (stride {s_stride}) is paired with teacher tap {t_name!r} "
                                 f"(stride {t_stride}); pair maps of equal stride with kd.taps / kd.teacher_taps")
        student_channels = [c for c, _ in student_geometry]
        teacher_channels = [c for c, _ in teacher_geometry]
        if student_channels != teacher_channels and not connectors:
            raise ValueError(f"tapped channels differ (student {student_channels} vs teacher {teacher_channels}); "
                             "enable connectors or tap layers with equal channels")
        self.connectors = build_connectors(student_channels, teacher_channels)
        self.names = list(self.student_taps)

    def _apply(self, fn: Any, recurse: bool = True) -> Distiller:
        super()._apply(fn, recurse)
        self.teacher.model._apply(fn)  # not a registered child, so move/cast it explicitly
        return self

    @contextlib.contextmanager
    def record(self, student: nn.Module) -> Iterator[FeatureTaps | None]:
        """Context recording the student's taps during its forward (None for logit KD)."""
        if not self.student_taps:
            yield None
            return
        with FeatureTaps(student, self.student_taps) as taps:
            yield taps

    def forward(self, student: nn.Module, student_raw: Any, student_taps: FeatureTaps | None,
                teacher_images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(Σ terms, {pair name: term})`` for one batch; the teacher sees ``teacher_images``."""
        teacher_raw, teacher_feats = self.teacher.forward(teacher_images, self.teacher_taps or None,
                                                          need_output=self.loss.uses_logits)
        if self.loss.uses_logits:
            pairs = [student.kd_logits(student_raw)], [self.teacher.model.kd_logits(teacher_raw)]
        else:
            assert student_taps is not None
            pairs = apply_connectors(self.connectors, student_taps.features), teacher_feats
        terms = self.loss.per_tap(*pairs)
        return torch.stack(terms).sum(), dict(zip(self.names, terms, strict=True))
