"""Multi-scale channel attention (MS-CAM) and iterative attentional feature fusion (iAFF), Dai et al. 2021
(attentional feature fusion), as the two-teacher RD of paper 001 uses them (reference facts: anomaly.md §2.2).

* context ``L(X) + G(X)``: a local branch ``Conv1×1(C→C/r) → BN → ReLU → Conv1×1(C/r→C) → BN`` at every pixel and
  a global branch, the same after ``AdaptiveAvgPool2d(1)``, broadcast over H×W; convs with bias;
* ``MSCAM``: ``X ⊗ σ(L(X) + G(X))`` (shape kept);
* ``IterativeAFF``: ``w = σ(C₁(x + y))``, ``z = x·w + y·(1 − w)``, then ``w₂ = σ(C₂(z))`` and
  ``x·w₂ + y·(1 − w₂)`` (no factor 2). C₂ has its *own* local and global branches, as the MXNet original;
  the PyTorch port reuses the first global branch by mistake (its ``global_att2`` is never called).
"""

from __future__ import annotations

import torch
from torch import nn


def _branch(channels: int, inter: int, pooled: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if pooled else []
    layers += [nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
               nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels)]
    return nn.Sequential(*layers)


class ChannelContext(nn.Module):
    """``L(X) + G(X)``: the pre-sigmoid attention logits of MS-CAM (``inter = channels // r``)."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        if channels < 1 or r < 1 or channels // r < 1:
            raise ValueError(f"MS-CAM needs channels >= r >= 1 (inter = channels // r >= 1), got channels={channels}, r={r}")
        inter = channels // r
        self.local_branch = _branch(channels, inter, pooled=False)
        self.global_branch = _branch(channels, inter, pooled=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_branch(x) + self.global_branch(x)  # [B,C,H,W] + [B,C,1,1] broadcast


class MSCAM(nn.Module):
    """``X ⊗ σ(L(X) + G(X))``."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        self.context = ChannelContext(channels, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.context(x))


class IterativeAFF(nn.Module):
    """iAFF of two maps of one shape (e.g. the two teachers' MFF outputs)."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        self.first = ChannelContext(channels, r)
        self.second = ChannelContext(channels, r)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"iAFF fuses two maps of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        w = torch.sigmoid(self.first(x + y))
        z = x * w + y * (1 - w)
        w2 = torch.sigmoid(self.second(z))
        return x * w2 + y * (1 - w2)
