"""The one-class bottleneck of reverse distillation (RD4AD's OCBE): multi-scale feature fusion (MFF) and the
one-class embedding (OCE). Facts: anomaly.md §1.2, anomaly_spec.md §1.

* ``MultiScaleFusion``: level 1 → two 3×3 stride-2 conv+BN+ReLU (c₁ → p/2 → p), level 2 → one (c₂ → p), level
  3 kept (a 1×1 conv+BN+ReLU to p when c₃ ≠ p, paper 001's widened ResNet34 branch), concatenated: 3p at
  stride 16 (WRN50-2: p = 1024 → 3072@16² at 256 px). Convs without bias, as the official code.
* ``OneClassEmbedding``: a ResNet stage of stride 2 on the 3p channels — torchvision ``Bottleneck`` blocks of
  ``planes=512`` (2048@8²; width 1024 with the official ``width_per_group=128``, 512 with anomalib's 64) or
  ``BasicBlock`` (512@8² for ResNet18/34 teachers).
* ``DynamicMultiScaleFusion`` (BSDRD's struct student, our reading of "dynamically fuses and compresses
  multi-scale features"): the same three branches, each weighted before the concatenation — ``softmax``: three
  learned logits; ``attention``: per-image weights from the pooled branches (SK-Net style: sum → GAP → FC →
  ReLU → FC → softmax over the scales); ``concat``: no weights (RD4AD's MFF). Weights are scaled by 3 so equal
  weights reproduce the plain MFF.
RD4AD's unused ``conv4``/``bn4`` are not built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MultiScaleFusion(nn.Module):
    """Three teacher levels (strides 4/8/16) → one stride-16 map of ``3 * path_channels`` channels."""

    def __init__(self, in_channels: Sequence[int], path_channels: int | None = None) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in in_channels)
        p = int(path_channels or c3)
        self.level1 = nn.Sequential(conv_bn_relu(c1, p // 2, stride=2), conv_bn_relu(p // 2, p, stride=2))
        self.level2 = conv_bn_relu(c2, p, stride=2)
        self.level3 = nn.Identity() if c3 == p else conv_bn_relu(c3, p, kernel=1)
        self.out_channels = 3 * p

    def branches(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The three levels brought to stride 16 and ``path_channels`` each."""
        if len(features) != 3:
            raise ValueError(f"MFF fuses 3 levels, got {len(features)}")
        return [self.level1(features[0]), self.level2(features[1]), self.level3(features[2])]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(self.branches(features), dim=1)


SCALE_WEIGHTINGS = ("softmax", "attention", "concat")


class DynamicMultiScaleFusion(MultiScaleFusion):
    """MFF whose three branches are weighted (learned or per-image) before the concatenation (module docstring)."""

    def __init__(self, in_channels: Sequence[int], path_channels: int | None = None, weighting: str = "softmax",
                 r: int = 16) -> None:
        super().__init__(in_channels, path_channels)
        if weighting not in SCALE_WEIGHTINGS:
            raise ValueError(f"model.struct_fusion={weighting!r}: choose one of {', '.join(SCALE_WEIGHTINGS)}")
        self.weighting = weighting
        p = self.out_channels // 3
        if weighting == "softmax":
            self.logits = nn.Parameter(torch.zeros(3))
        elif weighting == "attention":
            hidden = max(p // int(r), 8)
            self.select = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(p, hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, 3))

    def scale_weights(self, branches: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B, 3]`` weights (summing to 3) of the stride-16 branches."""
        batch = branches[0].shape[0]
        if self.weighting == "softmax":
            w = self.logits.softmax(0).expand(batch, 3)
        elif self.weighting == "attention":
            w = self.select(branches[0] + branches[1] + branches[2]).softmax(1)
        else:
            w = branches[0].new_full((batch, 3), 1.0 / 3)
        return 3 * w

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        branches = self.branches(features)
        w = self.scale_weights(branches)
        return torch.cat([b * w[:, k].view(-1, 1, 1, 1) for k, b in enumerate(branches)], dim=1)


class OneClassEmbedding(nn.Module):
    """A stride-2 ResNet stage compressing the fused map (RD4AD ``_make_layer(block, 512, blocks, stride=2)``)."""

    def __init__(self, in_channels: int, block: str = "bottleneck", blocks: int = 3, width_per_group: int = 128) -> None:
        super().__init__()
        if block not in ("bottleneck", "basic"):
            raise ValueError(f"OCE block must be 'bottleneck' or 'basic', got {block!r}")
        cls = Bottleneck if block == "bottleneck" else BasicBlock
        planes = 512
        out = planes * cls.expansion
        downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, 2, bias=False), nn.BatchNorm2d(out))
        extra = {"base_width": width_per_group} if cls is Bottleneck else {}
        layers = [cls(in_channels, planes, 2, downsample, **extra)]
        layers += [cls(out, planes, **extra) for _ in range(blocks - 1)]
        self.blocks = nn.Sequential(*layers)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def kaiming_init(module: nn.Module) -> None:
    """RD4AD's init: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0 (paper 001: Kaiming student)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
