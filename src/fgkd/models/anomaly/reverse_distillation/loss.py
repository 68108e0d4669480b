"""The reverse-distillation loss: cosine distance between teacher and student maps, summed over levels.

* ``flat`` (RD4AD's code, anomalib): per level ``mean_b(1 − cos(t_b.flatten(), s_b.flatten()))`` — one cosine per
  sample over the whole C×H×W map; hq-deng/RD4AD #22 reports that it trains better than the per-pixel form;
* ``pixel`` (paper 001 Eq. 2): per level ``mean_{b,h,w}(1 − cos_c(t, s))`` — the mean of the anomaly map M_k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fgkd.models.anomaly.components.anomaly_map import cosine_distance_maps

LOSS_FORMS = ("flat", "pixel")


def flat_cosine_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    terms = [(1 - F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)).mean()
             for t, s in zip(teacher, student, strict=True)]
    return torch.stack(terms).sum()


def pixel_cosine_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([m.mean() for m in cosine_distance_maps(teacher, student)]).sum()


def reverse_distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                              form: str = "flat") -> torch.Tensor:
    if form == "flat":
        return flat_cosine_loss(teacher, student)
    if form == "pixel":
        return pixel_cosine_loss(teacher, student)
    raise ValueError(f"model.loss must be one of {LOSS_FORMS}, got {form!r}")
