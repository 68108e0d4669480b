"""Convert official checkpoints into fgkd detector files (``python -m fgkd.models.convert SRC OUT.pt``).

Sources (``.pt``/``.pth`` files are read with ``torch.load(weights_only=False)``, because most of them pickle their
own project's classes; that project must be importable for the conversion only, never for fgkd itself):

* **Ultralytics** ``.pt`` (``pip install ultralytics``): YOLOv8 n/s/m/l (``yolov8s.pt`` …), YOLOv5u (``yolov5su.pt``) and RT-DETR-L
  (``rtdetr-l.pt``). The checkpoint's ``ema`` (or ``model``) module is the source; its yaml names the variant.
* **YOLOv6 0.4.0** ``.pt`` (meituan/YOLOv6 on ``PYTHONPATH``, or ``pip install yolov6detect``): YOLOv6 n/s/m/l,
  plain, anchor-aided (``--fuse_ab``) or self-distilled heads (:mod:`.yolov6`).
* **RT-DETR r18 / r50**, official (Apache-2.0) weights as plain tensors, no package needed (:mod:`.rtdetr`): the
  ``lyuwenyu/RT-DETR`` ``rtdetr_pytorch`` release ``.pth`` (``rtdetr_r18vd_dec3_6x_coco_from_paddle.pth``,
  ``rtdetr_r50vd_6x_coco_from_paddle.pth``), or the same model from Hugging Face transformers (a folder with
  ``config.json`` and ``model.safetensors``, e.g. ``PekingU/rtdetr_r18vd``, or the weights file itself).
* **YOLOv5 v7.0** ``.pt`` (the ultralytics/yolov5 repository on ``PYTHONPATH``, or ``pip install yolov5`` with
  its package folder on ``PYTHONPATH``): YOLOv5 n/s/m/l, anchors included (:mod:`.yolov5`).

The output is a detector file (:func:`fgkd.tasks.detect.save_detector`: weights, the detector spec at the source's
class count, the class names, imgsz 640) for ``model.weights=OUT.pt`` (class heads of another class count are
re-initialised, with a message listing them) and for ``predict.py``. Each mapping is checked: every fgkd tensor
gets exactly one source tensor of the same shape, and ``tests/test_convert.py`` shows equal outputs (< 1e-4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

INSTALL_HINTS = {
    "ultralytics": "pip install ultralytics  (in the environment used for the conversion only; fgkd never imports it)",
    "yolov6": "a YOLOv6 checkpoint: put a clone of https://github.com/meituan/YOLOv6 (0.4.0) on PYTHONPATH, or pip "
              "install yolov6detect (for the conversion only; fgkd never imports it)",
    "models": "a YOLOv5 v7.0 checkpoint: put a clone of https://github.com/ultralytics/yolov5 (v7.0) on PYTHONPATH, "
              "or pip install yolov5 and run with PYTHONPATH=\"$(python -c 'import yolov5, os; "
              "print(os.path.dirname(yolov5.__file__))')\" (for the conversion only; fgkd never imports it)",
}
#: the 80 COCO classes in the contiguous order of detectors trained on COCO (names for checkpoints without any)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
#: source keys with no fgkd counterpart: buffers recomputed from the config (DFL's fixed arange projection,
#: BatchNorm counters)
_DROPPED = re.compile(r"(\.dfl\.conv\.weight$|num_batches_tracked$)")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (unknown layout, missing package, mismatched tensors)."""


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` of a pickled checkpoint; a missing source package becomes an install hint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as err:
        package = (err.name or "").split(".")[0]
        hint = INSTALL_HINTS.get(package, f"install the package that wrote it ({package!r})")
        raise ConversionError(f"{path} pickles classes of the {package!r} package, which is not importable here. "
                              f"Fix: {hint}") from None


def map_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair source and target tensors in registration order (the layouts agree layer by layer); every pair must
    have the same shape and the same kind (weight, bias, running statistics), else the first mismatch is named."""
    src = [(k, v) for k, v in source.items() if not _DROPPED.search(k)]
    dst = [k for k in target if not _DROPPED.search(k)]
    if len(src) != len(dst):
        raise ConversionError(f"the source has {len(src)} tensors, the fgkd model {len(dst)}: another architecture "
                              "or size? pass --model")
    out = {}
    for (src_key, value), dst_key in zip(src, dst, strict=True):
        if value.shape != target[dst_key].shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ConversionError(f"source {src_key} {tuple(value.shape)} does not fit {dst_key} "
                                  f"{tuple(target[dst_key].shape)}: another architecture or size? pass --model")
        out[dst_key] = value
    return out


def map_by_rules(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                 rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename source keys with the first matching ``(regex, replacement)`` rule; the result must cover the fgkd
    model exactly, with equal shapes (unmapped source keys and uncovered targets are named)."""
    out, unmapped = {}, []
    for key, value in source.items():
        if _DROPPED.search(key):
            continue
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            unmapped.append(key)
    missing = [k for k in target if k not in out and not _DROPPED.search(k)]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in out.items()
             if k in target and v.shape != target[k].shape]
    extra = [k for k in out if k not in target]
    if unmapped or missing or wrong or extra:
        raise ConversionError("the checkpoint does not fit the fgkd model: " + "; ".join(
            f"{title} ({len(keys)}): {', '.join(keys[:6])}" for title, keys in
            (("unmapped source keys", unmapped), ("fgkd keys without a source", missing),
             ("shape mismatches", wrong), ("renamed keys fgkd does not have", extra)) if keys))
    return out


def convert(src: str | Path, out: str | Path, model: str | None = None) -> Path:
    """Convert ``src`` into the fgkd detector file ``out`` and return its path (see the module docstring)."""
    from fgkd.models.convert.rtdetr import from_rtdetr, is_rtdetr_state, official_state, read_hf
    from fgkd.models.convert.ultralytics import from_ultralytics
    from fgkd.models.convert.yolov5 import from_yolov5, is_yolov5
    from fgkd.models.convert.yolov6 import from_yolov6, is_yolov6

    path = Path(src).expanduser()
    if path.is_dir() or path.suffix == ".safetensors":
        state, names = read_hf(path)
        name, num_classes, class_names, state = from_rtdetr(state, "hf", model, names)
        return _save(src, out, name, num_classes, class_names, state)
    checkpoint = read_checkpoint(path)
    module = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, Mapping) else None
    if official_state(checkpoint) is not None:
        name, num_classes, class_names, state = from_rtdetr(official_state(checkpoint), "official", model)
    elif is_rtdetr_state(checkpoint) == "hf":  # a transformers pytorch_model.bin
        name, num_classes, class_names, state = from_rtdetr(checkpoint, "hf", model)
    elif is_yolov5(module):
        name, num_classes, class_names, state = from_yolov5(checkpoint, model)
    elif is_yolov6(module):
        name, num_classes, class_names, state = from_yolov6(checkpoint, model)
    elif hasattr(module, "yaml") and type(module).__module__.startswith("ultralytics"):
        name, num_classes, class_names, state = from_ultralytics(checkpoint, model)
    else:
        keys = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ConversionError(f"{src}: not a checkpoint this converter reads (no Ultralytics or YOLOv5 'ema'/'model' "
                              f"module; top level: {keys}); supported sources: Ultralytics YOLOv8 and RT-DETR-L .pt, "
                              "YOLOv5 v7.0 .pt, YOLOv6 0.4.0 .pt, RT-DETR r18/r50 .pth (rtdetr_pytorch) or transformers "
                              "folders")
    return _save(src, out, name, num_classes, class_names, state)


def _save(src: str | Path, out: str | Path, name: str, num_classes: int, class_names: list[str],
          state: Mapping[str, torch.Tensor]) -> Path:
    """Load the converted ``state`` into a fresh fgkd detector (strict, checked) and write the detector file."""
    from fgkd.models.detectors.base import build_detector
    from fgkd.tasks.detect import save_detector

    detector = build_detector(name, num_classes)
    detector.load_state_dict(convert_state(name, state, detector.state_dict()), strict=True)
    path = save_detector(out, detector, {"name": name, "num_classes": num_classes, "kwargs": {}}, class_names, imgsz=640)
    print(f"converted {src} -> {path} ({name}, {num_classes} classes, {detector.num_trainable_parameters():,} "
          f"parameters); fine-tune with model={name} model.weights={path}", flush=True)
    return path


def convert_state(name: str, source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """The source state dict in fgkd names for the detector ``name``."""
    from fgkd.models.convert.ultralytics import RTDETR_L_RULES

    if name.startswith(("yolov8", "yolov5", "yolov6")):
        state = map_by_order(source, target)
    elif name == "rtdetr_l":
        state = map_by_rules(source, target, RTDETR_L_RULES)
    elif name in ("rtdetr_r18", "rtdetr_r50"):  # renamed already (fgkd.models.convert.rtdetr); checked here
        state = map_by_rules(source, target, [(r"(.+)", r"\1")])
    else:
        raise ConversionError(f"no converter into {name!r} (yolov8/yolov5/yolov5u/yolov6 n/s/m/l, rtdetr_l/r18/r50)")
    # buffers fgkd keeps and the source does not (BatchNorm counters): the model's own values
    return {**{k: v for k, v in target.items() if _DROPPED.search(k)}, **state}
