"""YOLOv5u n/s/m/l: the YOLOv5 v6.0+ trunk (CSPDarknet + C3, SPPF, PANet with C3 without shortcut) with YOLOv8's
anchor-free decoupled head, DFL and TAL loss, as Ultralytics trains "YOLOv5" since 8.0 (``yolov5nu.pt`` …).

Facts: /work/shared/reference/detectors.md §3.1 (``v5/yolov5.yaml``: scales n ``[0.33, 0.25, 1024]``, s
``[0.33, 0.50, 1024]``, m ``[0.67, 0.75, 1024]``, l ``[1, 1, 1024]``; layers 0-9 the v6.0 backbone, 10-23 the PAN,
``Detect([17, 20, 23])`` the v8 head) and §3.2 (the v8 loss). The trunk is :mod:`fgkd.models.detectors.yolov5`'s,
the head, loss and post-processing :class:`~fgkd.models.detectors.yolov8.YOLOv8`'s; the module names and taps are
YOLOv8's (``backbone.stage2..5``, ``neck.out_p3..5``), so every KD connector and converter path is shared.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fgkd.models.detectors.base import register_detector
from fgkd.models.detectors.yolov5 import YOLOv5Backbone, YOLOv5Neck
from fgkd.models.detectors.yolov8 import OVERRIDES, YOLOv8
from fgkd.models.registry import check_options

#: ``[depth, width, max_channels]`` per size (v5/yolov5.yaml; 1024 never clips the YOLOv5 widths)
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 1024), "l": (1.00, 1.00, 1024),
}


class YOLOv5u(YOLOv8):
    """YOLOv5u detector: YOLOv5 backbone and neck, YOLOv8 head and loss."""

    family = "yolov5u"
    scales = SCALES

    @staticmethod
    def build_trunk(depth: float, width: float, max_channels: int) -> tuple[nn.Module, nn.Module]:
        backbone = YOLOv5Backbone(depth, width)
        return backbone, YOLOv5Neck(backbone.out_channels, depth, width)


def _build(scale: str, num_classes: int, **overrides: Any) -> YOLOv5u:
    check_options(f"yolov5{scale}u", overrides, OVERRIDES)
    return YOLOv5u(num_classes, scale, **overrides)


@register_detector("yolov5nu")
def yolov5nu(num_classes: int, **overrides: Any) -> YOLOv5u:
    return _build("n", num_classes, **overrides)


@register_detector("yolov5su")
def yolov5su(num_classes: int, **overrides: Any) -> YOLOv5u:
    return _build("s", num_classes, **overrides)


@register_detector("yolov5mu")
def yolov5mu(num_classes: int, **overrides: Any) -> YOLOv5u:
    return _build("m", num_classes, **overrides)


@register_detector("yolov5lu")
def yolov5lu(num_classes: int, **overrides: Any) -> YOLOv5u:
    return _build("l", num_classes, **overrides)
