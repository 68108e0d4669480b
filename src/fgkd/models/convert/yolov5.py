"""YOLOv5 v7.0 checkpoints (the ultralytics/yolov5 release ``yolov5n.pt`` … ``yolov5l.pt``, or ``train.py``'s
``best.pt``) -> fgkd ``yolov5{n,s,m,l}`` state dicts.

The release pickles ``models.yolo.DetectionModel`` (the repo root is on ``sys.path`` when it is written), stored
in half precision under ``model`` (``ema`` is None in the release, set in a training checkpoint). The layer list
``model.<i>`` is in yaml order, the same order as fgkd's ``backbone``/``neck``/``head``, so the tensors are paired
by order with shapes checked; the size is read from the yaml's ``depth_multiple``/``width_multiple``. v7.0 keeps
its anchors (possibly re-fitted by AutoAnchor) in stride units; fgkd keeps pixels: ``anchors × stride``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fgkd.models.convert import ConversionError
from fgkd.models.detectors.yolov5 import SCALES

#: the pickled module paths of a YOLOv5 v7.0 model: the repo layout and the ``pip install yolov5`` package
MODULES = ("models.yolo", "yolov5.models.yolo")


def is_yolov5(module: Any) -> bool:
    return type(module).__module__ in MODULES and hasattr(module, "yaml")


def from_yolov5(checkpoint: Mapping[str, Any], model: str | None = None
                ) -> tuple[str, int, list[str], dict[str, torch.Tensor]]:
    """``(fgkd model name, classes, class names, float32 state dict with anchors in pixels)``."""
    module = checkpoint.get("ema") or checkpoint.get("model")
    yaml = dict(module.yaml)
    multiples = (float(yaml.get("depth_multiple", 0)), float(yaml.get("width_multiple", 0)))
    found = next((s for s, m in SCALES.items() if all(abs(a - b) < 1e-6 for a, b in zip(m, multiples, strict=True))),
                 None)
    if model is None:
        if found is None:
            raise ConversionError(f"YOLOv5 depth/width multiples {multiples} are none of n/s/m/l "
                                  f"({SCALES}); the x size has no fgkd counterpart")
        model = f"yolov5{found}"
    if model not in {f"yolov5{s}" for s in SCALES}:
        raise ConversionError(f"--model {model}: YOLOv5 v7.0 checkpoints convert to yolov5n/s/m/l")
    anchors = yaml.get("anchors")
    if not (isinstance(anchors, list) and len(anchors) == 3 and all(len(a) == 6 for a in anchors)):
        raise ConversionError(f"YOLOv5 anchors {anchors!r}: fgkd's YOLOv5 has 3 levels of 3 anchors")
    names = getattr(module, "names", None) or {}
    class_names = [names[i] for i in sorted(names)] if isinstance(names, Mapping) else list(names)
    num_classes = int(yaml.get("nc") or len(class_names))
    state = {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    detect = module.model[-1]
    key = next(k for k in state if k.endswith(".anchors"))
    state[key] = (detect.anchors.float() * detect.stride.float().view(-1, 1, 1)).clone()  # stride units -> pixels
    return model, num_classes, class_names or [str(i) for i in range(num_classes)], state
