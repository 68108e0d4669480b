"""MD-GFLoss, the multi-dimensional feature gated fusion loss of BSDRD (paper 003) — our formulation.

The abstract gives the name and the aim ("selectivity for key features and sensitivity to abnormal areas");
no formula is public (anomaly_spec.md §3.1). What is built, every part a key of ``model=bsdrd``:

* cosine-distance terms over three dimensions, per teacher level k (the *scale* dimension):
  ``T_spatial,k = mean_{b,h,w} g_s(b,h,w) · (1 − cos_c(t, s))``   (per pixel, over channels: paper 001 Eq. 2),
  ``T_channel,k = mean_{b,c}  g_c(b,c)   · (1 − cos_hw(t_c, s_c))`` (per channel, over positions);
* feature gates (``feature_gates``, detached teacher statistics with mean 1, so strong responses — the "key
  features" — weigh more): ``g_s`` ∝ the teacher's channel L2 norm at each pixel, ``g_c`` ∝ the mean
  absolute activation of each channel; off: all ones;
* gated fusion over dimensions and scales (``md_gates``):
  ``fixed``:   ``L = Σ_k Σ_d λ_d · T_{d,k}`` with ``λ`` = ``md_weights`` (channel 1, spatial 1);
  ``learned``: ``L = Σ_{d,k} exp(−(a_d + b_k)) · T_{d,k} + (a_d + b_k)``, one log-gate per dimension (a) and
  per scale (b), the homoscedastic-uncertainty weighting of Kendall et al. (CVPR 2018): the regulariser keeps a
  learned gate from closing to shrink the loss (each gate settles at 1/T, balancing the terms).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

GATE_MODES = ("fixed", "learned")
DIMENSIONS = ("channel", "spatial")


def channel_cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``[B, C]``: ``1 − cos`` between each channel's maps (flattened over H×W)."""
    return 1 - F.cosine_similarity(t.flatten(2).float(), s.flatten(2).float(), dim=2)


def spatial_cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: ``1 − cos`` between the channel vectors at each pixel."""
    return 1 - F.cosine_similarity(t.float(), s.float(), dim=1)


@torch.no_grad()
def teacher_gates(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(channel gate [B, C], spatial gate [B, H, W])`` from the teacher's map, each with mean 1 per sample."""
    t = t.float()
    channel = t.abs().mean(dim=(2, 3))
    spatial = torch.linalg.vector_norm(t, dim=1)
    channel = channel / channel.mean(dim=1, keepdim=True).clamp_min(1e-12)
    spatial = spatial / spatial.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return channel, spatial


class MDGFLoss(nn.Module):
    """The gated fusion of channel and spatial cosine terms over the levels (module docstring)."""

    def __init__(self, levels: int = 3, gates: str = "fixed", weights: Mapping[str, float] | None = None,
                 feature_gates: bool = True) -> None:
        super().__init__()
        if gates not in GATE_MODES:
            raise ValueError(f"model.md_gates={gates!r}: choose one of {', '.join(GATE_MODES)}")
        weights = {"channel": 1.0, "spatial": 1.0, **dict(weights or {})}
        unknown = set(weights) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"model.md_weights: unknown dimensions {sorted(unknown)}; allowed: {', '.join(DIMENSIONS)}")
        self.gates, self.feature_gates = gates, bool(feature_gates)
        self.register_buffer("dim_weights", torch.tensor([float(weights[d]) for d in DIMENSIONS]), persistent=False)
        if gates == "learned":
            self.dim_log_gate = nn.Parameter(torch.zeros(len(DIMENSIONS)))
            self.scale_log_gate = nn.Parameter(torch.zeros(int(levels)))

    def terms(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[2, K]``: the channel and spatial terms of each level."""
        rows = []
        for t, s in zip(teacher, student, strict=True):
            channel, spatial = channel_cosine_distance(t, s), spatial_cosine_distance(t, s)
            if self.feature_gates:
                g_channel, g_spatial = teacher_gates(t)
                channel, spatial = channel * g_channel, spatial * g_spatial
            rows.append(torch.stack([channel.mean(), spatial.mean()]))
        return torch.stack(rows, dim=1)

    def fuse(self, terms: torch.Tensor) -> torch.Tensor:
        if self.gates == "fixed":
            return (self.dim_weights.view(-1, 1) * terms).sum()
        log_gate = self.dim_log_gate.view(-1, 1) + self.scale_log_gate.view(1, -1)
        return (torch.exp(-log_gate) * terms + log_gate).sum()

    def forward(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.terms(teacher, student))

    def gate_values(self) -> dict[str, torch.Tensor]:
        """The current gates (learned mode), for the training log."""
        if self.gates != "learned":
            return {}
        out = {f"gate_{d}": torch.exp(-g.detach()) for d, g in zip(DIMENSIONS, self.dim_log_gate, strict=True)}
        out.update({f"gate_level{k + 1}": torch.exp(-g.detach()) for k, g in enumerate(self.scale_log_gate)})
        return out
