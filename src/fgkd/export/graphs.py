"""The modules that become ONNX graphs: a deploy-fused detector (decoded boxes + scores, optionally with NMS
in the graph) and an anomaly model (encoder + bottleneck + decoder + map + blur + image score).

NMS in the graph is the ONNX ``NonMaxSuppression`` operator (per image and class, so it works for any batch
size): :class:`_NonMaxSuppression` runs ``torchvision.ops.nms`` per image and class in PyTorch and exports as
that operator, so the exported graph and the eager module select the same detections.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

#: columns of the ``detections`` output of a graph with NMS
DETECTION_COLUMNS = ("batch_index", "x1", "y1", "x2", "y2", "score", "class")


class _NonMaxSuppression(torch.autograd.Function):
    """``selected [K, 3]`` int64 rows ``(batch, class, box)`` as ONNX ``NonMaxSuppression`` defines them: per
    image and class, boxes with a score above ``conf`` by descending score, a box dropped when its IoU with a kept
    one exceeds ``iou``, at most ``max_per_class`` kept. ``boxes [B, A, 4]`` xyxy, ``scores [B, C, A]``."""

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou: float,
                conf: float) -> torch.Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                candidates = (scores[b, c] > conf).nonzero(as_tuple=True)[0]
                keep = candidates[torchvision.ops.nms(boxes[b, candidates], scores[b, c, candidates], iou)]
                keep = keep[:max_per_class]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], 1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_per_class: int, iou: float, conf: float) -> Any:
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([conf], dtype=torch.float32)),
                    center_point_box_i=0)


class DeployedDetector(nn.Module):
    """A fused detector for export. Without NMS: ``(boxes [B, A, 4] xyxy in input pixels, scores [B, A, nc])``
    (sigmoid class scores of every anchor). With NMS: ``detections [K, 7]`` rows :data:`DETECTION_COLUMNS` over
    the whole batch (class-wise NMS, every class above ``conf``, at most ``max_det`` per image and class)."""

    def __init__(self, detector: nn.Module, nms: bool = False, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300) -> None:
        super().__init__()
        self.detector, self.nms, self.conf, self.iou, self.max_det = detector, nms, conf, iou, max_det

    def forward(self, images: torch.Tensor) -> Any:
        raw = self.detector(images)
        boxes, scores = self.detector.decode(raw)
        if not self.nms:
            return boxes, scores
        selected = _NonMaxSuppression.apply(boxes, scores.transpose(1, 2), self.max_det, self.iou, self.conf)
        batch, cls, anchor = selected[:, 0], selected[:, 1], selected[:, 2]
        return torch.cat([batch[:, None].to(boxes.dtype), boxes[batch, anchor],
                          scores[batch, anchor, cls][:, None], cls[:, None].to(boxes.dtype)], 1)


class DeployedAnomalyModel(nn.Module):
    """An anomaly model for export: ImageNet-normalised ``images [B, 3, S, S]`` -> ``(anomaly_map [B, S, S],
    score [B])``, ``model.predict`` (the blurred, fused 1 − cos maps and their maximum) with the blur in float32:
    onnxruntime has no float64 convolution on CPU (the maps differ from the float64 blur by < 1e-5)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(images, blur_dtype=torch.float32)
