"""YOLOv6 v3.0/v4.0 checkpoints (the meituan/YOLOv6 0.4.0 release ``yolov6n.pt`` … ``yolov6l.pt``, or its
``tools/train.py`` ``best_ckpt.pt``) -> fgkd ``yolov6{n,s,m,l}`` state dicts.

The checkpoint pickles ``yolov6.models.yolo.Model`` (``model``, half precision; ``ema`` in training checkpoints),
so the conversion needs the ``yolov6`` package importable (a clone of meituan/YOLOv6 on ``PYTHONPATH``, or
``pip install yolov6detect``, which ships it). Backbone and neck come in fgkd's registration order and are paired
by order with shapes checked. The head differs by how it was trained:

* plain (``EffiDeHead``): ``stems``, ``cls_convs``, ``reg_convs``, ``cls_preds``, ``reg_preds``, as fgkd's;
* anchor-aided training (``--fuse_ab``, ``effidehead_fuseab``): the anchor-free ``cls_preds_af``/``reg_preds_af``
  are the inference branch (kept), the anchor-based ``*_ab`` convs are training-only (dropped);
* self-distillation of n/s (``distill_ns``): the plain-ltrb ``reg_preds_lrtb`` is the inference branch (kept as
  ``reg_preds``: fgkd's n/s regress plain ltrb), the DFL ``reg_preds`` trains only (dropped).

``detect.proj`` / ``proj_conv`` (the fixed DFL projection) are rebuilt by fgkd. The size is the one of
n/s/m/l whose tensors fit (``--model`` to force one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from fgkd.models.convert import COCO_CLASSES, ConversionError, map_by_order

#: the pickled module path of a YOLOv6 model (the repo layout, which yolov6detect keeps)
MODULE = "yolov6.models.yolo"
SIZES = ("yolov6n", "yolov6s", "yolov6m", "yolov6l")
_TRAINING_ONLY = re.compile(r"detect\.(proj|proj_conv\.weight|(cls|reg)_preds_ab\..+|anchors_init)$")


def is_yolov6(module: Any) -> bool:
    return type(module).__module__ == MODULE and hasattr(module, "detect")


def inference_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of the inference graph in the plain head's names (module docstring), order kept."""
    distilled = any(k.startswith("detect.reg_preds_lrtb.") for k in state)
    out = {}
    for key, value in state.items():
        if _TRAINING_ONLY.match(key) or (distilled and key.startswith("detect.reg_preds.")):
            continue
        key = re.sub(r"^detect\.(cls|reg)_preds_af\.", r"detect.\1_preds.", key)
        out[key.replace("detect.reg_preds_lrtb.", "detect.reg_preds.")] = value
    return out


def from_yolov6(checkpoint: Mapping[str, Any], model: str | None = None
                ) -> tuple[str, int, list[str], dict[str, torch.Tensor]]:
    """``(fgkd model name, classes, class names, float32 state dict in source order)``."""
    from fgkd.models.detectors.base import build_detector

    module = checkpoint.get("ema") or checkpoint.get("model")
    num_classes = int(module.detect.nc)
    state = inference_state({k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()})
    if model is not None and model not in SIZES:
        raise ConversionError(f"--model {model}: YOLOv6 checkpoints convert to {', '.join(SIZES)}")
    errors = []
    for name in [model] if model else SIZES:
        try:
            map_by_order(state, build_detector(name, num_classes).state_dict())
            break
        except ConversionError as err:
            errors.append(f"{name}: {err}")
    else:
        raise ConversionError("the YOLOv6 checkpoint fits none of " + "; ".join(errors))
    names = getattr(module, "names", None) or checkpoint.get("names")
    class_names = list(names) if names else (list(COCO_CLASSES) if num_classes == 80 else [str(i) for i in range(num_classes)])
    return name, num_classes, class_names, state
