"""Student decoders of reverse distillation: they rebuild the teacher's three levels from the OCE embedding.

* ``DeResNet`` (RD4AD ``de_resnet``): three stride-2 stages of "transposed" ResNet blocks, where the stride-2
  conv becomes ``ConvTranspose2d(k=2, s=2)`` and the residual path a 2×2 deconv + BN. ``de_wide_resnet50_2``:
  Bottleneck, blocks (3, 4, 6), planes 256/128/64, ``width_per_group`` 128: 2048@8² → 1024@16² → 512@32² → 256@64².
  ResNet18/34: BasicBlock, blocks (2, 2, 2) / (3, 4, 6), 512@8² → 256 → 128 → 64.
* ``InverseBlockDecoder`` (paper 001 Fig. 2): per stage one basic block — branch 1 ``ConvT 4×4/2`` + BN, branch 2
  ``Conv3×3 + BN + ReLU`` (to the teacher's channels) then ``ConvT 4×4/2`` (+ BN, ``branch2_bn``; the paper does
  not say) — summed, ReLU; the deepest stage (D3) adds ``Conv1×1 + BN + ReLU``. k=4, s=2, p=1 is exactly 2×.
Both return the levels shallow-first, the encoder's order: ``[stride 4, stride 8, stride 16]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def deconv2x2(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2, bias=False)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)


def shortcut(c_in: int, c_out: int, upsample: bool) -> nn.Module:
    """The residual path of a decoder block: 2×2 deconv + BN when upsampling, 1×1 conv + BN when the width
    changes, else identity."""
    if not upsample and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(deconv2x2(c_in, c_out) if upsample else nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.BatchNorm2d(c_out))


class UpBottleneck(nn.Module):
    """RD4AD's decoder Bottleneck: 1×1 → (2×2 deconv if upsampling else 3×3) → 1×1 (×4), residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, upsample: bool = False, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * base_width / 64)
        out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if upsample else conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(inplanes, out, upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


class UpBasicBlock(nn.Module):
    """RD4AD's decoder BasicBlock: (2×2 deconv if upsampling else 3×3) → 3×3, residual."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, upsample: bool = False, base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = deconv2x2(inplanes, planes) if upsample else conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(inplanes, planes, upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class DeResNet(nn.Module):
    """RD4AD's student: three upsampling stages from the OCE embedding (module docstring)."""

    def __init__(self, in_channels: int = 2048, block: str = "bottleneck", blocks: Sequence[int] = (3, 4, 6),
                 width_per_group: int = 128) -> None:
        super().__init__()
        cls = {"bottleneck": UpBottleneck, "basic": UpBasicBlock}.get(block)
        if cls is None:
            raise ValueError(f"decoder block must be 'bottleneck' or 'basic', got {block!r}")
        stages, inplanes = [], in_channels
        for planes, count in zip((256, 128, 64), blocks, strict=True):
            layers = [cls(inplanes, planes, upsample=True, base_width=width_per_group)]
            inplanes = planes * cls.expansion
            layers += [cls(inplanes, planes, base_width=width_per_group) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(256 // (2 ** i) * cls.expansion for i in range(3))[::-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]


class InverseBlock(nn.Module):
    """Paper 001's student basic block: ``ReLU(BN(ConvT₄(x)) + [BN](ConvT₄(ReLU(BN(Conv₃(x))))))``, 2× larger."""

    def __init__(self, c_in: int, c_out: int, branch2_bn: bool = True) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out))
        tail: list[nn.Module] = [nn.ConvTranspose2d(c_out, c_out, 4, 2, 1, bias=False)]
        if branch2_bn:
            tail.append(nn.BatchNorm2d(c_out))
        self.branch2 = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                                     nn.ReLU(inplace=True), *tail)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch1(x) + self.branch2(x))


class InverseBlockDecoder(nn.Module):
    """Paper 001's student: D3 (block + 1×1 conv) → D2 → D1, ending at the teacher's channels per level."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], branch2_bn: bool = True) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in out_channels)
        self.d3 = nn.Sequential(InverseBlock(in_channels, c3, branch2_bn),
                                nn.Conv2d(c3, c3, 1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True))
        self.d2 = InverseBlock(c3, c2, branch2_bn)
        self.d1 = InverseBlock(c2, c1, branch2_bn)
        self.out_channels = (c1, c2, c3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f3 = self.d3(x)
        f2 = self.d2(f3)
        return [self.d1(f2), f2, f3]
