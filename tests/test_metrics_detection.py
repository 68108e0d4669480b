"""The reported COCO metrics equal faster-coco-eval (pycocotools' algorithm, float64 thresholds) called directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO, COCOeval_faster

from fgkd.metrics.detection import build_map_metric, summarize


def _reference(preds, targets) -> dict[str, float]:
    """COCOeval_faster on the same boxes (xyxy -> COCO xywh, labels -> category ids + 1)."""
    images, annotations, detections = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True), 1):
        images.append({"id": i, "width": 200, "height": 200})
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for box, score, label in zip(p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            detections.append({"image_id": i, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                               "score": score})
    gt = COCO({"images": images, "annotations": annotations,
               "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]})
    evaluator = COCOeval_faster(gt, gt.loadRes(detections), "bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats  # AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ...
    return {"map": stats[0], "map_50": stats[1], "mar_1": stats[6], "mar_10": stats[7], "mar_100": stats[8]}


def _ours(preds, targets) -> dict[str, float]:
    metric = build_map_metric()
    metric.update(preds, targets)
    return summarize(metric.compute())


def test_a_match_at_iou_exactly_0_6_counts_as_in_pycocotools():
    """Issue 15.4: float32 thresholds (0.6000000238) gave mAP 0.2 here; COCO's float64 ones give 0.3."""
    preds = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 6.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    ours, reference = _ours(preds, targets), _reference(preds, targets)
    assert reference["map"] == pytest.approx(0.3)
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key


def test_a_random_five_image_set_matches_faster_coco_eval():
    """Ten ground-truth boxes of one class: recalls are exact multiples of 0.1, where float32 recall thresholds
    (0.1 -> 0.10000000149) read the precision of the wrong point."""
    rng = np.random.default_rng(0)
    preds, targets = [], []
    for _ in range(5):
        n = 2
        xy = rng.uniform(0, 150, (n, 2))
        wh = rng.uniform(8, 50, (n, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        jitter = gt + rng.normal(0, 4, gt.shape)
        extra = np.concatenate([rng.uniform(0, 150, (2, 2)), rng.uniform(0, 150, (2, 2)) + 20], 1)
        boxes = np.concatenate([jitter, extra])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.zeros(n, dtype=torch.long)})
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                      "scores": torch.tensor(rng.uniform(0.05, 1, len(boxes)), dtype=torch.float32),
                      "labels": torch.zeros(len(boxes), dtype=torch.long)})
    ours, reference = _ours(preds, targets), _reference(preds, targets)
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key


def test_confusion_matrix_matches_greedily_and_counts_misses_and_false_positives():
    from fgkd.metrics.detection_figures import confusion_matrix

    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float32)
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2])}
    pred = {"boxes": torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [21, 21, 30, 30], [60, 60, 70, 70],
                                   [40, 40, 50, 50]], dtype=torch.float32),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1]), "labels": torch.tensor([0, 0, 2, 1, 2])}
    matrix = confusion_matrix([pred], [target], num_classes=3, conf=0.25, iou=0.45)
    # pred 0 matches gt 0 (IoU 1, the higher of the two overlapping preds); pred 1 is a duplicate: background row;
    # pred 2 hits gt 1 with the wrong class; pred 3 hits nothing; pred 4 is under conf: gt 2 is missed
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1
    expected[1, 2] = 1
    expected[2, 3] = 1
    expected[3, 0] = 1
    expected[3, 1] = 1
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.sum() == 5
