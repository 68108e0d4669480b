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
* ``taps``: ``dict[str, str]`` mapping tap names (``backbone.p2`` … ``backbone.p5``, ``neck.p3`` …) to
  module paths usable with ``model.get_submodule``; ``default_taps``: the last K backbone maps
  (the paper's choice, Eq. 5-6).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import torch
from torch import nn


class DetectorOutput(TypedDict):
    cls: torch.Tensor
    box: torch.Tensor
    anchors: torch.Tensor
    strides: torch.Tensor
    bins: int


class Detector(nn.Module):
    """Base class: subclasses set ``taps``/``default_taps`` and implement the three methods."""

    #: tap name -> module path (relative to the detector)
    taps: dict[str, str] = {}
    #: default tap names distilled by FAKD: the last K backbone maps
    default_taps: list[str] = []
    num_classes: int
    family: str = ""
    #: how ``loss`` reduces over the images of a batch: "sum" or "mean" (DDP scales a summed loss by the world size)
    loss_reduction: str = ""

    def forward(self, images: torch.Tensor) -> DetectorOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(
        self, raw: DetectorOutput, targets: torch.Tensor, epoch: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def postprocess(
        self, raw: DetectorOutput, conf: float = 0.001, iou: float = 0.7, max_det: int = 300
    ) -> list[dict[str, torch.Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

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
        return self.get_submodule(self.taps[name])

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


_REGISTRY: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """Decorator: ``@register_detector("yolov8n")`` on a factory ``f(num_classes, **overrides)``."""

    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _REGISTRY:
            raise ValueError(f"detector {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def _import_families() -> None:
    # Importing the family modules fills the registry (timm-style registration on import).
    import importlib

    for module in ("yolov6", "yolov8"):
        try:
            importlib.import_module(f"fgkd.models.detectors.{module}")
        except ModuleNotFoundError as err:  # a family not written yet must not hide the others
            if err.name != f"fgkd.models.detectors.{module}":
                raise


def list_detectors() -> list[str]:
    _import_families()
    return sorted(_REGISTRY)


def build_detector(name: str, num_classes: int, **overrides: Any) -> Detector:
    """Build a registered detector with random init (weights are loaded separately, never downloaded)."""
    _import_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _REGISTRY[name](num_classes=num_classes, **overrides)
