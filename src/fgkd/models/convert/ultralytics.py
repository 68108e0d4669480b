"""Ultralytics checkpoints (``yolov8n.pt`` … ``yolov8l.pt``, ``yolov5nu.pt`` … ``yolov5lu.pt``, ``rtdetr-l.pt``) -> fgkd
state dicts.

The Ultralytics layer list is ``model.<i>`` in yaml order (detectors.md §3.1, §3.4). YOLOv8's and YOLOv5u's tensors
come in the same order as fgkd's ``backbone``/``neck``/``head`` (so they are paired by order, shapes checked); RT-DETR-L's neck
is registered in another order than fgkd's ``HybridEncoder``, so it is renamed by the rules below (yaml layer ->
fgkd module): L0-9 HGNetv2 -> ``backbone.layers``; L10/L14/L19 input projections of P5/P4/P3; L11 AIFI; L12/L17
lateral convs; L16/L21 top-down RepC3, L24/L27 bottom-up RepC3 (``cv1``/``cv2`` -> ``conv1``/``conv2``, RepConv
``conv1``/``conv2`` -> RepVGG ``dense``/``pointwise``); L22/L25 downsampling convs; L28 the decoder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from fgkd.models.convert import ConversionError

_REPC3 = {"16": "fpn_blocks.0", "21": "fpn_blocks.1", "24": "pan_blocks.0", "27": "pan_blocks.1"}
_CONVS = {"10": "input_proj.2", "14": "input_proj.1", "19": "input_proj.0", "12": "lateral_convs.0",
          "17": "lateral_convs.1", "22": "downsample_convs.0", "25": "downsample_convs.1"}
RTDETR_L_RULES: list[tuple[str, str]] = [
    (r"model\.([0-9])\.(.+)", r"backbone.layers.\1.\2"),
    (r"model\.11\.ma\.(.+)", r"encoder.aifi.layer.self_attn.\1"),
    (r"model\.11\.fc1\.(.+)", r"encoder.aifi.layer.linear1.\1"),
    (r"model\.11\.fc2\.(.+)", r"encoder.aifi.layer.linear2.\1"),
    (r"model\.11\.(norm[12]\..+)", r"encoder.aifi.layer.\1"),
    *[(rf"model\.{i}\.(conv|bn)\.(.+)", rf"encoder.{name}.\1.\2") for i, name in _CONVS.items()],
    *[(rf"model\.{i}\.cv([12])\.(.+)", rf"encoder.{name}.conv\1.\2") for i, name in _REPC3.items()],
    *[(rf"model\.{i}\.m\.(\d+)\.conv1\.(.+)", rf"encoder.{name}.bottlenecks.\1.dense.\2") for i, name in _REPC3.items()],
    *[(rf"model\.{i}\.m\.(\d+)\.conv2\.(.+)", rf"encoder.{name}.bottlenecks.\1.pointwise.\2")
      for i, name in _REPC3.items()],
    (r"model\.28\.input_proj\.(\d)\.0\.(.+)", r"decoder.input_proj.\1.conv.\2"),
    (r"model\.28\.input_proj\.(\d)\.1\.(.+)", r"decoder.input_proj.\1.bn.\2"),
    (r"model\.28\.decoder\.(layers\..+)", r"decoder.\1"),
    (r"model\.28\.((?:denoising_class_embed|query_pos_head|enc_output|enc_score_head|enc_bbox_head|dec_score_head|"
     r"dec_bbox_head)\..+)", r"decoder.\1"),
]
_VARIANT = re.compile(r"(yolov8[nslmx]|yolov5[nslmx]u|rtdetr-[lx])")


def from_ultralytics(checkpoint: Mapping[str, Any], model: str | None = None
                     ) -> tuple[str, int, list[str], dict[str, torch.Tensor]]:
    """``(fgkd model name, classes, class names, float32 source state dict)`` of an Ultralytics checkpoint."""
    module = checkpoint.get("ema") or checkpoint.get("model")
    yaml = dict(getattr(module, "yaml", None) or {})
    source_name = str(yaml.get("yaml_file", ""))
    scale = yaml.get("scale")
    found = _VARIANT.search(_stem(source_name))
    if model is None:
        if found is None:
            raise ConversionError(f"cannot tell the variant of this Ultralytics model (yaml_file={source_name!r}); "
                                  "pass --model yolov8s (or rtdetr_l)")
        variant = found.group(1)
        if variant.startswith("yolov8") and scale and not variant.endswith(str(scale)):
            variant = f"yolov8{scale}"
        elif variant.startswith("yolov5") and scale and variant[6] != str(scale):
            variant = f"yolov5{scale}u"
        model = variant.replace("rtdetr-", "rtdetr_")
    if model not in {*(f"yolov8{s}" for s in "nsml"), *(f"yolov5{s}u" for s in "nsml"), "rtdetr_l"}:
        raise ConversionError(f"--model {model}: Ultralytics checkpoints convert to yolov8n/s/m/l, yolov5nu/su/mu/lu "
                              "or rtdetr_l (the x sizes have no fgkd counterpart)")
    names = getattr(module, "names", None) or {}
    class_names = [names[i] for i in sorted(names)] if isinstance(names, Mapping) else list(names)
    num_classes = int(yaml.get("nc") or len(class_names))
    if class_names and len(class_names) != num_classes:
        raise ConversionError(f"{len(class_names)} class names for nc={num_classes} in the checkpoint")
    state = {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    return model, num_classes, class_names or [str(i) for i in range(num_classes)], state


def _stem(name: str) -> str:
    """"yolov8s.yaml" -> "yolov8s"."""
    return name.rsplit("/", 1)[-1].split(".")[0]
