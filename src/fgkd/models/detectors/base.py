"""The Detector interface every detector family implements, and the registry that builds them by name.

Contract (DESIGN.md "Interfaces"):

* ``forward(images) -> raw``: ``images`` is ``float[B,3,H,W]`` in ``[0, 1]`` (H, W multiples of 32).
  ``raw`` is a :class:`DetectorOutput` dict:

  - ``cls``: ``float[B, A, nc]`` class **logits** for every anchor point A (all levels concatenated,
    stride 8 first);
  - ``box``: ``float[B, A, 4 * bins]`` distribution logits (DFL, ``bins`` > 0) or ``float[B, A, 4]``
    plain ltrb distances in stride units (``bins == 0``);
  - ``anchors``: ``float[A, 2]`` anchor-point centres in input pixels ((i + 0.5) * stride);
  - ``strides``: ``float[A, 1]``;
  - ``bins``: int, number of DFL bins per side (YOLOv8: 16 → values 0..15; YOLOv6 m/l: 17 → 0..16; 0 = plain).

* ``loss(raw, targets, epoch=None) -> (total, parts)``: ``targets`` is ``float[M, 6]`` rows
  ``(batch_index, class, x1, y1, x2, y2)`` in input pixels; ``parts`` holds detached scalars
  (``box``, ``cls``, ``dfl`` …) for logging.
* ``postprocess(raw, conf=0.001, iou=0.7, max_det=300) -> list[{boxes xyxy px, scores, labels}]``.
* ``taps``: ``dict[str, TapInfo]`` — tap name (``backbone.p2`` … ``backbone.p5``, ``neck.p3`` …) ->
  ``TapInfo(module, channels, stride)``: the module path (``model.get_submodule``), the channels and the
  output stride of its map, declared per instance like timm's ``feature_info`` so distillation connectors are
  built without a probe forward pass (tests/test_distill_taps.py checks them against a forward);
  ``default_taps``: the last K backbone maps (the paper's choice, Eq. 5-6).
* ``loss_reduction``: ``"sum"`` | ``"mean"`` over the images of a batch; ``kd_logits(raw)``: logits for logit KD.
* ``raw`` is opaque outside its family: only the family's own ``loss`` / ``postprocess`` / ``kd_logits`` read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict

import torch
from torch import nn

from fgkd.models.registry import UnknownModelError, build_model, list_models, register_model


class DetectorOutput(TypedDict):
    cls: torch.Tensor
    box: torch.Tensor
    anchors: torch.Tensor
    strides: torch.Tensor
    bins: int


class TapInfo(NamedTuple):
    """A distillation point: the module path, the channels and the stride (input px per map px) of its output."""

    module: str
    channels: int
    stride: int


class Detector(nn.Module):
    """Base class: subclasses set ``taps``/``default_taps`` and implement the three methods."""

    #: tap name -> TapInfo (set per instance in ``__init__``: channels depend on the size)
    taps: dict[str, TapInfo] = {}
    #: default tap names distilled by FAKD: the last K backbone maps
    default_taps: list[str] = []
    num_classes: int
    family: str = ""
    #: how ``loss`` reduces over the images of a batch: "sum" or "mean" (DDP scales a summed loss by the world size)
    loss_reduction: str = ""
    #: set-prediction heads (RT-DETR) need no NMS: their exported raw outputs are selected by top score only
    nms_free: bool = False

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> DetectorOutput:  # pragma: no cover
        """``targets`` (``float[M, 6]``) is for families whose training forward needs them (DETR denoising);
        dense YOLO heads ignore it."""
        raise NotImplementedError

    def loss(
        self, raw: DetectorOutput, targets: torch.Tensor, epoch: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def postprocess(
        self, raw: DetectorOutput, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
        multi_label: bool = False,
    ) -> list[dict[str, torch.Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, raw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(boxes [B, A, 4] xyxy in input pixels, class scores [B, A, nc] in [0, 1])`` of every prediction
        before NMS (what an exported graph without NMS outputs). Default: the dense anchor-free heads' raw
        (ltrb distances, DFL or plain, and class logits)."""
        from fgkd.models.detectors.ops import decode_boxes

        return decode_boxes(raw), raw["cls"].sigmoid()

    def kd_logits(self, raw: Any) -> torch.Tensor:
        """Class logits ``[B, A, nc]`` for logit KD (``kd=kl``); families without dense logits refuse it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define logits for logit KD (kd=kl); use a feature KD loss "
            "(kd=cs|mse|mmd|cwd) with this detector"
        )

    def tap_module(self, name: str) -> nn.Module:
        """The module behind tap ``name``; unknown names raise a KeyError listing the valid ones."""
        if name not in self.taps:
            raise KeyError(f"unknown tap {name!r} for {type(self).__name__}; valid taps: {sorted(self.taps)}")
        return self.get_submodule(self.taps[name].module)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """``@register_detector("yolov8n")``: :func:`fgkd.models.registry.register_model` for task ``detect``."""
    return register_model(name, task="detect")


def list_detectors() -> list[str]:
    return list_models(task="detect")


def build_detector(name: str, num_classes: int, **overrides: Any) -> Detector:
    """Build a registered detector (``weights=PATH`` loads a local file; nothing is downloaded)."""
    if name in list_models() and name not in list_detectors():
        raise UnknownModelError(f"{name!r} is not a detector; choose one of: {', '.join(list_detectors())}")
    return build_model(name, num_classes, **overrides)
