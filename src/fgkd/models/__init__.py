"""Model zoo: every family behind one registry (``fgkd.models.registry``); detectors (YOLOv6, YOLOv8)."""

from fgkd.models.detectors.base import Detector, build_detector, list_detectors, register_detector
from fgkd.models.registry import (
           UnknownModelError,
           UnknownOptionError,
           build_model,
           list_models,
           register_model,
)

__all__ = ["Detector", "UnknownModelError", "UnknownOptionError", "build_detector", "build_model", "list_detectors",
           "list_models", "register_detector", "register_model"]
