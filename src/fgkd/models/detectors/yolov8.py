"""YOLOv8 n/s/m/l: a clean-room PyTorch re-implementation from the published architecture facts.

Written from /work/shared/reference/detectors.md §3 (layer table of ``yolov8.yaml``, scaling rule, module
definitions, Detect head, bias init); no Ultralytics code is used (AGPL). Layout:

* ``backbone``: layers 0-9 grouped by output stride — ``stem`` (L0, /2), ``stage2`` (L1-2, /4 = P2),
  ``stage3`` (L3-4, /8 = P3), ``stage4`` (L5-6, /16 = P4), ``stage5`` (L7-9 incl. SPPF, /32 = P5).
* ``neck``: the PAN of layers 10-21; outputs ``out_p3`` (L15), ``out_p4`` (L18), ``out_p5`` (L21).
* ``head``: the decoupled anchor-free Detect head (DFL box branch with ``bins`` = reg_max = 16, cls branch).

Parameters are registered in the reference layer order (and, inside each block, in the order the
reference describes its sub-modules), so a converter for third-party checkpoints could pair tensors by
order and shape (not verified against a real checkpoint; none is downloaded here).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fgkd.models.detectors.base import Detector, DetectorOutput, TapInfo, register_detector
from fgkd.models.detectors.common import ConvBNAct
from fgkd.models.detectors.losses import YOLOv8Loss
from fgkd.models.detectors.ops import make_anchors, postprocess
from fgkd.models.registry import check_options

#: ``[depth, width, max_channels]`` per model size (yolov8.yaml ``scales``)
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
}
#: output strides of the three detection levels (P3, P4, P5)
STRIDES: tuple[int, int, int] = (8, 16, 32)
#: DFL bins per box side (reference ``reg_max``)
DFL_BINS = 16
#: initial DFL logit slope per bin (YOLOv8Head.reset_biases): ~1.5-stride initial box sides
DFL_INIT_DECAY = 0.5


def scaled_depth(repeats: int, depth: float) -> int:
    """Block repeats after depth scaling: ``max(round(n * depth), 1)`` for n > 1 (reference parse_model)."""
    return max(round(repeats * depth), 1) if repeats > 1 else repeats


def scaled_width(channels: int, width: float, max_channels: int, divisor: int = 8) -> int:
    """Channels after width scaling: ``min(c, max_channels) * width`` rounded up to a multiple of 8."""
    return int(math.ceil(min(channels, max_channels) * width / divisor) * divisor)


class Bottleneck(nn.Module):
    """Two 3×3 ConvBNAct with an optional identity shortcut (only when the channel counts match)."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.conv1 = ConvBNAct(c_in, hidden, 3)
        self.conv2 = ConvBNAct(hidden, c_out, 3)
        self.residual = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.residual else y


class C2f(nn.Module):
    """CSP block with two convs: 1×1 to 2·h channels, split in halves, chain ``n`` bottlenecks on the
    second half keeping every intermediate, concatenate all (2+n)·h maps and project with a 1×1 conv."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.hidden = c_out // 2  # expansion 0.5
        # Registration order (split conv, output conv, bottlenecks) follows the reference block.
        self.split_conv = ConvBNAct(c_in, 2 * self.hidden, 1)
        self.out_conv = ConvBNAct((2 + num_blocks) * self.hidden, c_out, 1)
        self.blocks = nn.ModuleList(
            Bottleneck(self.hidden, self.hidden, shortcut=shortcut, expansion=1.0) for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = list(self.split_conv(x).chunk(2, dim=1))
        for block in self.blocks:
            maps.append(block(maps[-1]))
        return self.out_conv(torch.cat(maps, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): 1×1 halve, three chained k×k stride-1 max-pools, concat the four
    maps, 1×1 project."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.reduce = ConvBNAct(c_in, hidden, 1)
        self.project = ConvBNAct(4 * hidden, c_out, 1)
        self.pool = nn.MaxPool2d(kernel_size=kernel, stride=1, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [self.reduce(x)]
        for _ in range(3):
            maps.append(self.pool(maps[-1]))
        return self.project(torch.cat(maps, dim=1))


class YOLOv8Backbone(nn.Module):
    """Layers 0-9. Each stage is an ``nn.Sequential`` whose output is the stage's feature map."""

    def __init__(self, depth: float, width: float, max_channels: int) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return scaled_width(c, width, max_channels)

        def reps(n: int) -> int:
            return scaled_depth(n, depth)

        self.stem = ConvBNAct(3, ch(64), 3, 2)  # L0, /2
        self.stage2 = nn.Sequential(  # L1-2, /4 (P2)
            ConvBNAct(ch(64), ch(128), 3, 2), C2f(ch(128), ch(128), reps(3), shortcut=True)
        )
        self.stage3 = nn.Sequential(  # L3-4, /8 (P3)
            ConvBNAct(ch(128), ch(256), 3, 2), C2f(ch(256), ch(256), reps(6), shortcut=True)
        )
        self.stage4 = nn.Sequential(  # L5-6, /16 (P4)
            ConvBNAct(ch(256), ch(512), 3, 2), C2f(ch(512), ch(512), reps(6), shortcut=True)
        )
        self.stage5 = nn.Sequential(  # L7-9, /32 (P5)
            ConvBNAct(ch(512), ch(1024), 3, 2),
            C2f(ch(1024), ch(1024), reps(3), shortcut=True),
            SPPF(ch(1024), ch(1024), 5),
        )
        self.out_channels = (ch(256), ch(512), ch(1024))  # P3, P4, P5
        self.stage_channels = (ch(128), *self.out_channels)  # P2 … P5

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stage3(self.stage2(self.stem(images)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        return p3, p4, p5


class YOLOv8Neck(nn.Module):
    """PAN, layers 10-21: top-down (upsample + concat + C2f) then bottom-up (stride-2 conv + concat + C2f).
    The neck's C2f blocks have no shortcut (the reference head entries pass no ``True``)."""

    def __init__(self, in_channels: tuple[int, int, int], depth: float, width: float, max_channels: int) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return scaled_width(c, width, max_channels)

        n = scaled_depth(3, depth)
        c3, c4, c5 = in_channels
        self.topdown_p4 = C2f(c5 + c4, ch(512), n)  # L12 (after L10 upsample, L11 concat with L6)
        self.out_p3 = C2f(ch(512) + c3, ch(256), n)  # L15 (after L13 upsample, L14 concat with L4)
        self.down_p3 = ConvBNAct(ch(256), ch(256), 3, 2)  # L16
        self.out_p4 = C2f(ch(256) + ch(512), ch(512), n)  # L18 (after L17 concat with L12)
        self.down_p4 = ConvBNAct(ch(512), ch(512), 3, 2)  # L19
        self.out_p5 = C2f(ch(512) + c5, ch(1024), n)  # L21 (after L20 concat with L9)
        self.out_channels = (ch(256), ch(512), ch(1024))

    def forward(
        self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = feats
        td4 = self.topdown_p4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        n3 = self.out_p3(torch.cat([F.interpolate(td4, scale_factor=2.0, mode="nearest"), p3], 1))
        n4 = self.out_p4(torch.cat([self.down_p3(n3), td4], 1))
        n5 = self.out_p5(torch.cat([self.down_p4(n4), p5], 1))
        return n3, n4, n5


class YOLOv8Head(nn.Module):
    """Decoupled anchor-free head: per level a box branch (3×3, 3×3, 1×1 → 4·bins DFL logits) and a
    class branch (3×3, 3×3, 1×1 → nc logits)."""

    def __init__(
        self, in_channels: tuple[int, ...], num_classes: int, bins: int = DFL_BINS, strides=STRIDES
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bins = bins
        self.strides = tuple(strides)
        box_ch = max(16, in_channels[0] // 4, 4 * bins)
        cls_ch = max(in_channels[0], min(num_classes, 100))
        self.box_branches = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, box_ch, 3), ConvBNAct(box_ch, box_ch, 3), nn.Conv2d(box_ch, 4 * bins, 1))
            for c in in_channels
        )
        self.cls_branches = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, cls_ch, 3), ConvBNAct(cls_ch, cls_ch, 3), nn.Conv2d(cls_ch, num_classes, 1))
            for c in in_channels
        )
        self.reset_biases()

    @torch.no_grad()
    def reset_biases(self, image_size: int = 640) -> None:
        """Class logits as the reference: log(5 / nc / (640 / stride)^2), i.e. a prior of ~5 objects per image
        spread over the level's grid and the classes. Box (DFL) logits: NOT the reference's constant 1.0.

        A constant gives a uniform distribution, i.e. initial boxes 15 strides wide (120 px on P3, 480 px on
        P5). Against small inputs/objects (SynthPipes at 160 px: median box ~10 px) their CIoU is ~0.01, the
        task-aligned soft targets (~IoU) are ~0, and the box/DFL losses, weighted by those targets, give no
        gradient: images whose boxes never got small are never learned (tests/test_learning.py). Here bin k
        starts at logit ``-DFL_INIT_DECAY * k``: expected distance ~1.5 strides per side, boxes ~3 strides
        wide (24 px on P3, 96 px on P5), the scale each level is meant for.
        """
        bin_logits = -DFL_INIT_DECAY * torch.arange(self.bins, dtype=torch.float32)
        for box_branch, cls_branch, stride in zip(self.box_branches, self.cls_branches, self.strides, strict=False):
            box_bias = box_branch[-1].bias
            box_bias.copy_(bin_logits.repeat(4).to(box_bias))  # side-major: channel side * bins + bin
            cls_branch[-1].bias.fill_(math.log(5 / self.num_classes / (image_size / stride) ** 2))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Per level ``[B, 4*bins + nc, H, W]`` (box DFL logits first, then class logits)."""
        return [
            torch.cat([box_branch(x), cls_branch(x)], 1)
            for x, box_branch, cls_branch in zip(feats, self.box_branches, self.cls_branches, strict=False)
        ]


class YOLOv8(Detector):
    """YOLOv8 detector (one size = one ``(depth, width, max_channels)`` triple)."""

    family = "yolov8"
    scales = SCALES
    loss_reduction = "sum"  # detectors.md §3: the reference returns loss * batch_size
    #: tap name -> (module path, output stride); the channels come from the size (``_declare_taps``)
    TAP_POINTS = {
        "backbone.p2": ("backbone.stage2", 4),  # L2
        "backbone.p3": ("backbone.stage3", 8),  # L4
        "backbone.p4": ("backbone.stage4", 16),  # L6
        "backbone.p5": ("backbone.stage5", 32),  # L9 (SPPF output)
        "neck.p3": ("neck.out_p3", 8),  # L15
        "neck.p4": ("neck.out_p4", 16),  # L18
        "neck.p5": ("neck.out_p5", 32),  # L21
    }
    # The paper distills the last K=3 backbone maps (Eq. 5-6).
    default_taps = ["backbone.p3", "backbone.p4", "backbone.p5"]

    def __init__(
        self,
        num_classes: int,
        scale: str = "n",
        *,
        box_gain: float = 7.5,
        cls_gain: float = 0.5,
        dfl_gain: float = 1.5,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        min_candidate_size: float = 0.0,
    ) -> None:
        super().__init__()
        if scale not in self.scales:
            raise ValueError(f"unknown {type(self).__name__} scale {scale!r}; choose one of {sorted(self.scales)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        depth, width, max_channels = self.scales[scale]
        self.scale = scale
        self.num_classes = num_classes
        self.bins = DFL_BINS
        self.strides = STRIDES
        self.loss_kwargs = dict(
            box_gain=box_gain, cls_gain=cls_gain, dfl_gain=dfl_gain, topk=topk, alpha=alpha, beta=beta,
            min_candidate_size=min_candidate_size,
        )
        self.backbone, self.neck = self.build_trunk(depth, width, max_channels)
        self.head = YOLOv8Head(self.neck.out_channels, num_classes, DFL_BINS, STRIDES)
        channels = dict(zip(self.TAP_POINTS, (*self.backbone.stage_channels, *self.neck.out_channels), strict=True))
        self.taps = {name: TapInfo(path, channels[name], stride) for name, (path, stride) in self.TAP_POINTS.items()}
        # YOLOv8Loss, built on the first loss() call; held in a plain dict so it never becomes part of the
        # module tree (no state_dict entries, nothing for optimizers/EMA to see).
        self._criterion: dict[str, Any] = {}

    @staticmethod
    def build_trunk(depth: float, width: float, max_channels: int) -> tuple[nn.Module, nn.Module]:
        """``(backbone, neck)`` of one size (YOLOv5u swaps in the YOLOv5 ones); registration order = yaml order."""
        backbone = YOLOv8Backbone(depth, width, max_channels)
        return backbone, YOLOv8Neck(backbone.out_channels, depth, width, max_channels)

    def forward_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw per-level head maps ``[B, 4*bins + nc, H/s, W/s]`` for s in (8, 16, 32)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"image height/width must be multiples of 32, got {tuple(images.shape[-2:])}")
        return self.head(self.neck(self.backbone(images)))

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> DetectorOutput:
        levels = self.forward_levels(images)
        flat = torch.cat([level.flatten(2) for level in levels], 2).transpose(1, 2)  # [B, A, 4*bins+nc]
        box, cls = flat.split([4 * self.bins, self.num_classes], dim=2)
        anchors, strides = make_anchors(levels, self.strides, offset=0.5)
        # fp32 geometry even when the head runs in half precision (AMP)
        anchor_dtype = torch.promote_types(anchors.dtype, torch.float32)
        anchors, strides = anchors.to(anchor_dtype), strides.to(anchor_dtype)
        return {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": self.bins}

    def kd_logits(self, raw: DetectorOutput) -> torch.Tensor:
        return raw["cls"]

    def loss(
        self, raw: DetectorOutput, targets: torch.Tensor, epoch: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "fn" not in self._criterion:
            self._criterion["fn"] = YOLOv8Loss(self.num_classes, bins=self.bins, **self.loss_kwargs)
        return self._criterion["fn"](raw, targets, epoch=epoch)

    def postprocess(
        self, raw: DetectorOutput, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
        multi_label: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        return postprocess(raw, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)

    @torch.no_grad()
    def fuse(self) -> YOLOv8:
        """Fold every BatchNorm into its conv (deployment); eval outputs are unchanged. Returns self."""
        for module in self.modules():
            if isinstance(module, ConvBNAct):
                module.fuse()
        return self


#: keyword overrides ``build_detector("yolov8*", nc, ...)`` accepts besides ``weights`` (YOLOv8Loss settings)
OVERRIDES = ("box_gain", "cls_gain", "dfl_gain", "topk", "alpha", "beta", "min_candidate_size")


def _build(scale: str, num_classes: int, **overrides: Any) -> YOLOv8:
    check_options(f"yolov8{scale}", overrides, OVERRIDES)
    return YOLOv8(num_classes, scale, **overrides)


@register_detector("yolov8n")
def yolov8n(num_classes: int, **overrides: Any) -> YOLOv8:
    return _build("n", num_classes, **overrides)


@register_detector("yolov8s")
def yolov8s(num_classes: int, **overrides: Any) -> YOLOv8:
    return _build("s", num_classes, **overrides)


@register_detector("yolov8m")
def yolov8m(num_classes: int, **overrides: Any) -> YOLOv8:
    return _build("m", num_classes, **overrides)


@register_detector("yolov8l")
def yolov8l(num_classes: int, **overrides: Any) -> YOLOv8:
    return _build("l", num_classes, **overrides)
