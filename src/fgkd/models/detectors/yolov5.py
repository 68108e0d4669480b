"""YOLOv5 n/s/m/l (v7.0, anchor-based): a clean-room PyTorch re-implementation from the published facts.

Written from /work/shared/reference/detectors.md §3 and param_counts.md (layer table of ``yolov5X.yaml`` v6.0/v7.0
layout, depth/width multiples, parameter counts); no Ultralytics code is used (GPL/AGPL). Layout:

* ``backbone``: ``stem`` (L0 Conv 6×6/2), ``stage2`` (L1-2, /4), ``stage3`` (L3-4, /8 = P3), ``stage4`` (L5-6,
  /16 = P4), ``stage5`` (L7-9 incl. SPPF, /32 = P5); C3 blocks (three 1×1 convs around n bottlenecks).
* ``neck``: the PANet of layers 10-23 (``lateral_p5`` L10, ``lateral_p4`` L14, outputs L17 / L20 / L23).
* ``head``: ``Detect`` — per level one 1×1 conv to ``3 × (5 + nc)`` (3 anchors: xywh, objectness, classes); the
  anchors (COCO k-means, in pixels) are buffers, not parameters.

Decoding (v7.0 ``Detect``): ``xy = (2σ(t_xy) − 0.5 + cell) · stride``, ``wh = (2σ(t_wh))² · anchor``, score
``σ(obj) · σ(cls)``. The loss is :class:`fgkd.models.detectors.yolov5_loss.YOLOv5Loss`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fgkd.models.detectors.base import Detector, TapInfo, register_detector
from fgkd.models.detectors.common import ConvBNAct
from fgkd.models.detectors.ops import select_detections
from fgkd.models.detectors.yolov8 import SPPF
from fgkd.models.registry import check_options

#: ``(depth_multiple, width_multiple)`` per size (yolov5{n,s,m,l}.yaml)
SCALES: dict[str, tuple[float, float]] = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0)}
STRIDES: tuple[int, int, int] = (8, 16, 32)
#: the v7.0 default anchors (w, h in pixels) per level P3, P4, P5
ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)


def scaled_depth(repeats: int, depth: float) -> int:
    return max(round(repeats * depth), 1) if repeats > 1 else repeats


def scaled_width(channels: int, width: float, divisor: int = 8) -> int:
    """``make_divisible(c * width, 8)`` (v7.0 parse_model: no channel cap)."""
    return int(math.ceil(channels * width / divisor) * divisor)


class Bottleneck(nn.Module):
    """1×1 then 3×3 ConvBNAct (hidden = ``c_out · expansion``), identity shortcut when enabled and shapes match."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.cv2 = ConvBNAct(hidden, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs: ``cv3(cat(m(cv1(x)), cv2(x)))``, hidden = ``c_out / 2``."""

    def __init__(self, c_in: int, c_out: int, repeats: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        hidden = int(c_out * 0.5)
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.cv2 = ConvBNAct(c_in, hidden, 1)
        self.cv3 = ConvBNAct(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, 1.0) for _ in range(repeats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


class YOLOv5Backbone(nn.Module):
    def __init__(self, depth: float, width: float) -> None:
        super().__init__()
        c = [scaled_width(v, width) for v in (64, 128, 256, 512, 1024)]
        self.stem = ConvBNAct(3, c[0], 6, 2, 2)
        self.stage2 = nn.Sequential(ConvBNAct(c[0], c[1], 3, 2), C3(c[1], c[1], scaled_depth(3, depth)))
        self.stage3 = nn.Sequential(ConvBNAct(c[1], c[2], 3, 2), C3(c[2], c[2], scaled_depth(6, depth)))
        self.stage4 = nn.Sequential(ConvBNAct(c[2], c[3], 3, 2), C3(c[3], c[3], scaled_depth(9, depth)))
        self.stage5 = nn.Sequential(ConvBNAct(c[3], c[4], 3, 2), C3(c[4], c[4], scaled_depth(3, depth)),
                                    SPPF(c[4], c[4], 5))
        self.stage_channels = (c[1], c[2], c[3], c[4])  # P2 .. P5
        self.out_channels = (c[2], c[3], c[4])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stage3(self.stage2(self.stem(images)))
        p4 = self.stage4(p3)
        return p3, p4, self.stage5(p4)


class YOLOv5Neck(nn.Module):
    """Layers 10-23: top-down (1×1 lateral, upsample, concat, C3 without shortcut), then bottom-up."""

    def __init__(self, channels: tuple[int, int, int], depth: float, width: float) -> None:
        super().__init__()
        c3, c4, c5 = channels
        n = scaled_depth(3, depth)
        w256, w512, w1024 = (scaled_width(v, width) for v in (256, 512, 1024))
        self.lateral_p5 = ConvBNAct(c5, w512, 1)  # L10
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td_p4 = C3(w512 + c4, w512, n, shortcut=False)  # L13
        self.lateral_p4 = ConvBNAct(w512, w256, 1)  # L14
        self.out_p3 = C3(w256 + c3, w256, n, shortcut=False)  # L17
        self.down_p3 = ConvBNAct(w256, w256, 3, 2)  # L18
        self.out_p4 = C3(w256 + w256, w512, n, shortcut=False)  # L20
        self.down_p4 = ConvBNAct(w512, w512, 3, 2)  # L21
        self.out_p5 = C3(w512 + w512, w1024, n, shortcut=False)  # L23
        self.out_channels = (w256, w512, w1024)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = feats
        l5 = self.lateral_p5(p5)
        l4 = self.lateral_p4(self.td_p4(torch.cat([self.up(l5), p4], 1)))
        n3 = self.out_p3(torch.cat([self.up(l4), p3], 1))
        n4 = self.out_p4(torch.cat([self.down_p3(n3), l4], 1))
        n5 = self.out_p5(torch.cat([self.down_p4(n4), l5], 1))
        return n3, n4, n5


class YOLOv5Head(nn.Module):
    """Detect: one 1×1 conv per level to ``na · (5 + nc)``; biases initialised as v7.0 ``_initialize_biases``
    (objectness for ~8 objects per 640² image, class prior 0.6 / (nc − 0.99))."""

    def __init__(self, channels: tuple[int, ...], num_classes: int, anchors: tuple, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, len(anchors[0])
        self.outputs = 5 + num_classes
        self.m = nn.ModuleList(nn.Conv2d(c, self.num_anchors * self.outputs, 1) for c in channels)
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))  # [nl, na, 2] pixels
        with torch.no_grad():
            for conv, stride in zip(self.m, strides, strict=True):
                bias = conv.bias.view(self.num_anchors, -1)
                bias[:, 4] += math.log(8 / (640 / stride) ** 2)
                bias[:, 5:] += math.log(0.6 / (num_classes - 0.99))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Per level ``[B, na, H, W, 5 + nc]`` raw logits."""
        out = []
        for conv, x in zip(self.m, feats, strict=True):
            b, _, h, w = x.shape
            out.append(conv(x).view(b, self.num_anchors, self.outputs, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return out


class YOLOv5(Detector):
    """YOLOv5 v7.0 detector; ``raw`` = ``{"levels": [B, na, H, W, 5 + nc] per level, "anchors", "strides", "imgsz"}``."""

    family = "yolov5"
    loss_reduction = "sum"  # the reference returns (lbox + lobj + lcls) * batch_size
    TAP_POINTS = {
        "backbone.p2": ("backbone.stage2", 4),
        "backbone.p3": ("backbone.stage3", 8),  # L4
        "backbone.p4": ("backbone.stage4", 16),  # L6
        "backbone.p5": ("backbone.stage5", 32),  # L9 (SPPF output)
        "neck.p3": ("neck.out_p3", 8),  # L17
        "neck.p4": ("neck.out_p4", 16),  # L20
        "neck.p5": ("neck.out_p5", 32),  # L23
    }
    default_taps = ["backbone.p3", "backbone.p4", "backbone.p5"]

    def __init__(self, num_classes: int, scale: str = "n", *, box_gain: float = 0.05, obj_gain: float = 1.0,
                 cls_gain: float = 0.5, anchor_t: float = 4.0) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"unknown YOLOv5 scale {scale!r}; choose one of {sorted(SCALES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        depth, width = SCALES[scale]
        self.scale, self.num_classes, self.strides = scale, num_classes, STRIDES
        self.loss_kwargs = dict(box_gain=box_gain, obj_gain=obj_gain, cls_gain=cls_gain, anchor_t=anchor_t)
        self.backbone = YOLOv5Backbone(depth, width)
        self.neck = YOLOv5Neck(self.backbone.out_channels, depth, width)
        self.head = YOLOv5Head(self.neck.out_channels, num_classes, ANCHORS, STRIDES)
        channels = dict(zip(self.TAP_POINTS, (*self.backbone.stage_channels, *self.neck.out_channels), strict=True))
        self.taps = {name: TapInfo(path, channels[name], stride) for name, (path, stride) in self.TAP_POINTS.items()}
        self._criterion: dict[str, Any] = {}

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, Any]:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"YOLOv5 expects float[B,3,H,W] with H, W multiples of 32, got {tuple(images.shape)}")
        levels = self.head(self.neck(self.backbone(images)))
        return {"levels": levels, "anchors": self.head.anchors, "strides": self.strides,
                "imgsz": (int(images.shape[-2]), int(images.shape[-1]))}

    def decode(self, raw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(boxes [B, A, 4] xyxy px, scores [B, A, nc] = σ(obj)·σ(cls))``, A = Σ na·H·W (module docstring)."""
        boxes, scores = [], []
        for level, anchors, stride in zip(raw["levels"], raw["anchors"], raw["strides"], strict=True):
            b, na, h, w, _ = level.shape
            p = level.float().sigmoid()
            ys, xs = torch.meshgrid(torch.arange(h, device=level.device), torch.arange(w, device=level.device),
                                    indexing="ij")
            cells = torch.stack([xs, ys], -1).float()  # [H, W, 2] as (x, y)
            xy = (p[..., 0:2] * 2 - 0.5 + cells) * stride
            wh = (p[..., 2:4] * 2) ** 2 * anchors.float().view(1, na, 1, 1, 2)
            boxes.append(torch.cat([xy - wh / 2, xy + wh / 2], -1).reshape(b, -1, 4))
            scores.append((p[..., 4:5] * p[..., 5:]).reshape(b, -1, self.num_classes))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def kd_logits(self, raw: dict[str, Any]) -> torch.Tensor:
        """Class logits ``[B, A, nc]`` (objectness is not a class: logit KD distils the class branch only)."""
        return torch.cat([level[..., 5:].reshape(level.shape[0], -1, self.num_classes) for level in raw["levels"]], 1)

    def loss(self, raw: dict[str, Any], targets: torch.Tensor, epoch: int | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "fn" not in self._criterion:
            from fgkd.models.detectors.yolov5_loss import YOLOv5Loss

            self._criterion["fn"] = YOLOv5Loss(self.num_classes, **self.loss_kwargs)
        return self._criterion["fn"](raw, targets)

    @torch.no_grad()
    def postprocess(self, raw: dict[str, Any], conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                    multi_label: bool = False) -> list[dict[str, torch.Tensor]]:
        boxes, scores = self.decode(raw)
        return select_detections(boxes, scores, conf, iou, max_det, multi_label=multi_label)

    @torch.no_grad()
    def fuse(self) -> YOLOv5:
        """Fold every BatchNorm into its conv (deployment); eval outputs are unchanged. Returns self."""
        self.eval()
        for module in self.modules():
            if isinstance(module, ConvBNAct):
                module.fuse()
        return self


OVERRIDES = ("box_gain", "obj_gain", "cls_gain", "anchor_t")


def _build(scale: str, num_classes: int, **overrides: Any) -> YOLOv5:
    check_options(f"yolov5{scale}", overrides, OVERRIDES)
    return YOLOv5(num_classes, scale, **overrides)


@register_detector("yolov5n")
def yolov5n(num_classes: int, **overrides: Any) -> YOLOv5:
    return _build("n", num_classes, **overrides)


@register_detector("yolov5s")
def yolov5s(num_classes: int, **overrides: Any) -> YOLOv5:
    return _build("s", num_classes, **overrides)


@register_detector("yolov5m")
def yolov5m(num_classes: int, **overrides: Any) -> YOLOv5:
    return _build("m", num_classes, **overrides)


@register_detector("yolov5l")
def yolov5l(num_classes: int, **overrides: Any) -> YOLOv5:
    return _build("l", num_classes, **overrides)
