"""Detection metrics: a thin wrapper over torchmetrics' COCO-style ``MeanAveragePrecision``.

This is the one place that names the paper's five reported columns (mAP, mAP50, mAR1, mAR10, mAR100);
the training loop, ``metrics.json``, the printed tables and the sweep aggregation all read them from here.
Evaluation facts (backend, non-scalar outputs, update/compute split): /work/shared/reference/detectors.md §6.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision

from fgkd.options import DISPLAY_NAMES, FIVE_METRICS

#: prefix of the per-class AP keys (``ap/<class_name>``)
PER_CLASS_PREFIX = "ap/"
#: COCO's IoU (0.50:0.05:0.95) and recall (0:0.01:1) thresholds as float64 Python numbers, as pycocotools
#: builds them (np.linspace, float64). torchmetrics' defaults come from float32 tensors (0.6 -> 0.6000000238),
#: which puts a match at IoU exactly 0.6, or a recall of exactly k/n, on the wrong side.
IOU_THRESHOLDS: list[float] = [float(v) for v in np.linspace(0.5, 0.95, 10)]
REC_THRESHOLDS: list[float] = [float(v) for v in np.linspace(0.0, 1.0, 101)]


def build_map_metric(**overrides: Any) -> MeanAveragePrecision:
    """COCO mAP over IoU 0.50:0.95 with per-class AP, on the faster_coco_eval backend (≈4-5× pycocotools)."""
    kwargs: dict[str, Any] = dict(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="faster_coco_eval",
                                  iou_thresholds=list(IOU_THRESHOLDS), rec_thresholds=list(REC_THRESHOLDS))
    kwargs.update(overrides)
    metric = MeanAveragePrecision(**kwargs)
    # Low-confidence predictions (conf 0.001, up to 300 per image) are the COCO protocol; COCOeval keeps the
    # top 100 per image itself, so the "more than 100 detections" warning is noise here.
    metric.warn_on_many_detections = False
    # faster_coco_eval logs its whole COCO summary at INFO on every compute (once per class with class_metrics).
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)
    return metric


def split_targets(targets: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Batch targets ``float[M, 6]`` rows ``(batch_index, class, x1, y1, x2, y2)`` -> one dict per image."""
    if targets.ndim != 2 or targets.shape[-1] != 6:
        raise ValueError(f"targets must be float[M, 6] (batch_index, class, x1, y1, x2, y2), got {tuple(targets.shape)}")
    image_index = targets[:, 0].long()
    per_image = []
    for i in range(batch_size):
        rows = targets[image_index == i]
        per_image.append({"boxes": rows[:, 2:6].float(), "labels": rows[:, 1].long()})
    return per_image


def summarize(result: Mapping[str, torch.Tensor], class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Scalars to log/save: the five metrics plus ``ap/<class_name>`` for every class seen in preds or targets.

    Non-scalar outputs (``classes``, ``*_per_class``) are dropped here (``log_dict`` cannot take them).
    ``-1`` keeps the COCO meaning "not applicable" (e.g. no ground truth at all in the split).
    """
    scalars = {name: float(result[name]) for name in FIVE_METRICS}
    if "classes" in result and "map_per_class" in result:
        classes = result["classes"].reshape(-1).tolist()
        per_class = result["map_per_class"].reshape(-1).tolist()
        if len(per_class) == len(classes):  # class_metrics=False gives a single -1 instead
            for class_id, ap in zip(classes, per_class, strict=True):
                name = class_names[class_id] if class_names is not None and 0 <= class_id < len(class_names) else str(class_id)
                scalars[PER_CLASS_PREFIX + name] = float(ap)
    return scalars


def format_table(rows: Mapping[str, Mapping[str, Any]] | Mapping[str, Any], digits: int = 3) -> str:
    """The five columns with the paper's headers (:func:`fgkd.metrics.table.format_table`)."""
    from fgkd.metrics.table import format_table as generic_table

    return generic_table(rows, FIVE_METRICS, DISPLAY_NAMES, digits)
