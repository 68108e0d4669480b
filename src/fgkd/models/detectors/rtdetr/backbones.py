"""RT-DETR backbones: PResNet-vd 18/50 (the official Apache-2.0 ``rtdetr_pytorch``) and HGNetv2-L (RT-DETR-L).

Written from the architecture facts (/work/shared/reference/detectors.md §3.4, §4), not from code:

* **PResNet-vd** (ResNet "variant d"): a three-conv 3×3 stem (3→32/2, 32→32, 32→64) and a 3×3/2 max-pool; four
  stages of BasicBlocks (depth 18: [2, 2, 2, 2]) or Bottlenecks (depth 50: [3, 4, 6, 3], stride on the 3×3 conv);
  the first block of every stage has a projection shortcut, an average-pool + 1×1 conv where it downsamples
  (the "d" tweak). Outputs: stages 2-4 (strides 8 / 16 / 32). The official r50 config freezes the stem
  (``freeze_at=0``) and uses frozen BatchNorm (``freeze_norm=True``): the BN statistics and affine values are
  buffers there, so they are not parameters (torchvision's ``FrozenBatchNorm2d`` here).
* **HGNetv2-L** (``rtdetr-l.yaml`` layers 0-9): ``HGStem[32, 48]``; HGBlock×6 [48, 128, k3]; DWConv/2;
  HGBlock×6 [96, 512, k3] (L3, /8); DWConv/2; three light HGBlocks [192, 1024, k5] (L5-7, /16, the 2nd and 3rd
  residual); DWConv/2; light HGBlock [384, 2048, k5] (L9, /32). An HGBlock concatenates its input and n = 6
  successive conv outputs, squeezes to c2/2 and excites to c2 (1×1 convs, ReLU); "light" blocks use 1×1 +
  depth-wise k×k convs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from fgkd.models.detectors.common import ConvBNAct


def _conv_norm(c_in: int, c_out: int, kernel: int, stride: int = 1, act: str = "none", groups: int = 1,
               frozen_norm: bool = False, bn_eps: float = 1e-5, padding: int | None = None) -> ConvBNAct:
    block = ConvBNAct(c_in, c_out, kernel, stride, padding=padding, groups=groups, act=act)
    block.bn = FrozenBatchNorm2d(c_out, eps=bn_eps) if frozen_norm else nn.BatchNorm2d(c_out, eps=bn_eps)
    return block


# -- PResNet-vd ------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: bool, **norm: object) -> None:
        super().__init__()
        self.branch2a = _conv_norm(c_in, c_out, 3, stride, act="relu", **norm)
        self.branch2b = _conv_norm(c_out, c_out, 3, 1, **norm)
        self.short = None if shortcut else _projection(c_in, c_out, stride, **norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.short is None else self.short(x)
        return F.relu(self.branch2b(self.branch2a(x)) + short)


class BottleNeck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: bool, **norm: object) -> None:
        super().__init__()
        self.branch2a = _conv_norm(c_in, c_out, 1, 1, act="relu", **norm)
        self.branch2b = _conv_norm(c_out, c_out, 3, stride, act="relu", **norm)  # variant d: stride on the 3×3
        self.branch2c = _conv_norm(c_out, c_out * self.expansion, 1, 1, **norm)
        self.short = None if shortcut else _projection(c_in, c_out * self.expansion, stride, **norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.short is None else self.short(x)
        return F.relu(self.branch2c(self.branch2b(self.branch2a(x))) + short)


def _projection(c_in: int, c_out: int, stride: int, **norm: object) -> nn.Module:
    if stride == 2:  # ResNet-D: average-pool then a 1×1 conv instead of a strided 1×1 conv
        return nn.Sequential(nn.AvgPool2d(2, 2, 0, ceil_mode=True), _conv_norm(c_in, c_out, 1, 1, **norm))
    return _conv_norm(c_in, c_out, 1, stride, **norm)


PRESNET_DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (BottleNeck, (3, 4, 6, 3)),
    101: (BottleNeck, (3, 4, 23, 3)),
}


class PResNet(nn.Module):
    """ResNet-vd returning the stride-8/16/32 maps (``stage_channels``); see the module docstring."""

    def __init__(self, depth: int = 18, freeze_stem: bool = False, frozen_norm: bool = False, bn_eps: float = 1e-5) -> None:
        super().__init__()
        if depth not in PRESNET_DEPTHS:
            raise ValueError(f"PResNet depth {depth} is not one of {sorted(PRESNET_DEPTHS)}")
        block, counts = PRESNET_DEPTHS[depth]
        norm = {"frozen_norm": frozen_norm, "bn_eps": bn_eps}
        self.stem = nn.Sequential(_conv_norm(3, 32, 3, 2, act="relu", **norm), _conv_norm(32, 32, 3, 1, act="relu", **norm),
                                  _conv_norm(32, 64, 3, 1, act="relu", **norm))
        self.pool = nn.MaxPool2d(3, 2, 1)
        c_in, stages = 64, []
        for index, (c_out, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            blocks = []
            for i in range(count):
                blocks.append(block(c_in, c_out, 2 if i == 0 and index > 0 else 1, shortcut=i > 0, **norm))
                c_in = c_out * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stage2, self.stage3, self.stage4, self.stage5 = stages
        self.stage_channels = tuple(c * block.expansion for c in (128, 256, 512))
        if freeze_stem:
            self.stem.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage2(self.pool(self.stem(x)))
        p3 = self.stage3(x)
        p4 = self.stage4(p3)
        return [p3, p4, self.stage5(p4)]


# -- HGNetv2 ---------------------------------------------------------------------------------------------------
class HGStem(nn.Module):
    """Stem to stride 4: 3×3/2 conv, then a max-pool branch beside two 2×2 convs, concatenated, 3×3/2, 1×1."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, bn_eps: float) -> None:
        super().__init__()
        self.stem1 = _conv_norm(c_in, c_mid, 3, 2, act="relu", bn_eps=bn_eps)
        self.stem2a = _conv_norm(c_mid, c_mid // 2, 2, 1, act="relu", bn_eps=bn_eps, padding=0)
        self.stem2b = _conv_norm(c_mid // 2, c_mid, 2, 1, act="relu", bn_eps=bn_eps, padding=0)
        self.stem3 = _conv_norm(c_mid * 2, c_mid, 3, 2, act="relu", bn_eps=bn_eps)
        self.stem4 = _conv_norm(c_mid, c_out, 1, 1, act="relu", bn_eps=bn_eps)
        self.pool = nn.MaxPool2d(2, 1, 0, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.stem1(x), [0, 1, 0, 1])  # the 2×2 convs and the pool keep the size after this pad
        branch = self.stem2b(F.pad(self.stem2a(x), [0, 1, 0, 1]))
        return self.stem4(self.stem3(torch.cat([self.pool(x), branch], 1)))


class LightConv(nn.Module):
    """1×1 conv (no activation) then a depth-wise k×k conv with ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = _conv_norm(c_in, c_out, 1, 1, bn_eps=bn_eps)
        self.conv2 = _conv_norm(c_out, c_out, kernel, 1, act="relu", groups=c_out, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class HGBlock(nn.Module):
    """n successive convs; their outputs and the input are concatenated, squeezed (c2/2) and excited (c2)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, kernel: int = 3, n: int = 6, light: bool = False,
                 shortcut: bool = False, bn_eps: float = 1e-3) -> None:
        super().__init__()
        def make(c: int) -> nn.Module:
            if light:
                return LightConv(c, c_mid, kernel, bn_eps)
            return _conv_norm(c, c_mid, kernel, 1, act="relu", bn_eps=bn_eps)

        self.m = nn.ModuleList(make(c_in if i == 0 else c_mid) for i in range(n))
        self.sc = _conv_norm(c_in + n * c_mid, c_out // 2, 1, 1, act="relu", bn_eps=bn_eps)
        self.ec = _conv_norm(c_out // 2, c_out, 1, 1, act="relu", bn_eps=bn_eps)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for conv in self.m:
            outputs.append(conv(outputs[-1]))
        y = self.ec(self.sc(torch.cat(outputs, 1)))
        return y + x if self.add else y


def _depthwise_down(channels: int, bn_eps: float) -> ConvBNAct:
    return _conv_norm(channels, channels, 3, 2, groups=math.gcd(channels, channels), bn_eps=bn_eps)


class HGNetv2(nn.Module):
    """HGNetv2-L as RT-DETR-L uses it; ``layers`` holds L0-L9 in the yaml's order (taps L3, L7, L9)."""

    def __init__(self, bn_eps: float = 1e-3) -> None:
        super().__init__()
        e = bn_eps
        self.layers = nn.Sequential(
            HGStem(3, 32, 48, e),                                        # L0  /4
            HGBlock(48, 48, 128, 3, 6, bn_eps=e),                        # L1
            _depthwise_down(128, e),                                     # L2  /8
            HGBlock(128, 96, 512, 3, 6, bn_eps=e),                       # L3  P3
            _depthwise_down(512, e),                                     # L4  /16
            HGBlock(512, 192, 1024, 5, 6, light=True, bn_eps=e),         # L5
            HGBlock(1024, 192, 1024, 5, 6, light=True, shortcut=True, bn_eps=e),  # L6
            HGBlock(1024, 192, 1024, 5, 6, light=True, shortcut=True, bn_eps=e),  # L7  P4
            _depthwise_down(1024, e),                                    # L8  /32
            HGBlock(1024, 384, 2048, 5, 6, light=True, bn_eps=e),        # L9  P5
        )
        self.stage_channels = (512, 1024, 2048)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in (3, 7, 9):
                outputs.append(x)
        return outputs
