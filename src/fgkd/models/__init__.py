"""Model zoo: detectors (YOLOv6, YOLOv8) behind one small interface and a registry."""

from fgkd.models.detectors.base import Detector, build_detector, list_detectors, register_detector

__all__ = ["Detector", "build_detector", "list_detectors", "register_detector"]
