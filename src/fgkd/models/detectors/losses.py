"""Training losses of the anchor-free YOLO heads: YOLOv8 (TAL + BCE + CIoU + DFL, reference
detectors.md §3.2) and YOLOv6 (TAL or ATSS warm-up + VariFocal + SIoU/GIoU + optional DFL, §2.2).

Both are callables ``loss(raw, targets[M, 6], epoch=None) -> (total, parts)`` on the raw head output
of base.DetectorOutput; ``parts`` holds the detached, gain-weighted terms ``box``, ``cls``, ``dfl``.
Boxes are compared in stride units (targets divided by each anchor's stride), as the references do;
all loss arithmetic runs in float32 (safe under autocast).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .assigners import Assignment, ATSSAssigner, TaskAlignedAssigner, pad_targets
from .iou import bbox_iou
from .ops import bbox2dist, check_raw, decode_ltrb, dist2bbox

__all__ = ["YOLOv8Loss", "YOLOv6Loss", "dfl_loss", "varifocal_loss"]


def dfl_loss(logits: torch.Tensor, target_ltrb: torch.Tensor) -> torch.Tensor:
    """Distribution Focal Loss (Li et al. 2020): ``logits [N, 4, bins]``, continuous targets
    ``[N, 4]`` in ``[0, bins - 1)``; cross-entropy on the two neighbouring bins weighted by linear
    interpolation, averaged over the 4 sides -> ``[N]``."""
    bins = logits.shape[-1]
    left = target_ltrb.floor().long()
    right = left + 1
    weight_left = right.to(target_ltrb.dtype) - target_ltrb
    weight_right = 1 - weight_left
    flat = logits.reshape(-1, bins)
    ce_left = F.cross_entropy(flat, left.reshape(-1), reduction="none").view_as(target_ltrb)
    ce_right = F.cross_entropy(flat, right.reshape(-1), reduction="none").view_as(target_ltrb)
    return (ce_left * weight_left + ce_right * weight_right).mean(-1)


def varifocal_loss(
    logits: torch.Tensor, target_scores: torch.Tensor, one_hot: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0
) -> torch.Tensor:
    """VariFocal loss (Zhang et al. 2021) as YOLOv6 uses it, summed: ``BCE(p, q) * w`` with
    ``w = alpha * p^gamma * (1 - y) + q * y`` (p = sigmoid(logits), q soft target, y one-hot label).
    BCE is taken from logits: the same value as on probabilities, without log(0) overflow."""
    probs = logits.sigmoid()
    weight = alpha * probs.pow(gamma) * (1 - one_hot) + target_scores * one_hot
    bce = F.binary_cross_entropy_with_logits(logits, target_scores, reduction="none")
    return (bce * weight).sum()


def _full_precision(raw: Mapping[str, Any]) -> torch.autocast:
    """Disable autocast inside the loss: DFL softmax/matmul and the IoU terms must stay float32."""
    return torch.autocast(device_type=raw["cls"].device.type, enabled=False)


def _prepare(raw: Mapping[str, Any], targets: torch.Tensor, num_classes: int):
    """Shared set-up: float32 predictions, stride-unit geometry and padded gts."""
    check_raw(raw)
    cls_logits = raw["cls"].float()
    if cls_logits.shape[-1] != num_classes:
        raise ValueError(f"raw['cls'] has {cls_logits.shape[-1]} classes but the loss expects {num_classes}")
    box = raw["box"].float()
    anchors, strides = raw["anchors"].float(), raw["strides"].float()
    anchor_grid = anchors / strides  # anchor points in stride units
    pred_ltrb = decode_ltrb({"box": box, "bins": raw["bins"]})
    pred_boxes = dist2bbox(pred_ltrb, anchor_grid)  # [B, A, 4] stride units
    gt_labels, gt_boxes, mask_gt = pad_targets(targets.float().to(cls_logits.device), cls_logits.shape[0], num_classes)
    return cls_logits, box, anchors, strides, anchor_grid, pred_boxes, gt_labels, gt_boxes, mask_gt


class YOLOv8Loss:
    """YOLOv8 / YOLOv5u detection loss (reference §3.2).

    * assignment: TaskAlignedAssigner(topk 10, alpha 0.5, beta 6, CIoU);
    * cls: BCE-with-logits against the soft targets, summed / max(sum of targets, 1);
    * box: (1 - CIoU) weighted by each positive's target-score sum, / the same normaliser;
    * dfl: DFL with targets clamped to ``bins - 1 - 0.01``, same weighting;
    * total = (7.5 box + 0.5 cls + 1.5 dfl) * batch_size, as the reference returns it.
    """

    def __init__(
        self,
        num_classes: int,
        bins: int = 16,
        box_gain: float = 7.5,
        cls_gain: float = 0.5,
        dfl_gain: float = 1.5,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        scale_by_batch_size: bool = True,
        min_candidate_size: float = 0.0,
    ) -> None:
        if bins < 2:
            raise ValueError(f"YOLOv8Loss needs DFL bins >= 2, got bins={bins}")
        self.num_classes, self.bins = num_classes, bins
        self.box_gain, self.cls_gain, self.dfl_gain = box_gain, cls_gain, dfl_gain
        self.scale_by_batch_size = scale_by_batch_size
        self.assigner = TaskAlignedAssigner(topk, num_classes, alpha, beta, iou_kind="ciou",
                                            min_candidate_size=min_candidate_size)

    def __call__(
        self, raw: Mapping[str, Any], targets: torch.Tensor, epoch: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with _full_precision(raw):
            return self._compute(raw, targets)

    def _compute(self, raw: Mapping[str, Any], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if int(raw["bins"]) != self.bins:
            raise ValueError(f"raw['bins']={raw['bins']} but YOLOv8Loss was built with bins={self.bins}")
        cls_logits, box, anchors, strides, anchor_grid, pred_boxes, gt_labels, gt_boxes, mask_gt = _prepare(
            raw, targets, self.num_classes
        )
        assigned: Assignment = self.assigner(
            cls_logits.detach().sigmoid(), pred_boxes.detach() * strides, anchors, gt_labels, gt_boxes, mask_gt
        )
        target_scores = assigned.target_scores
        normaliser = target_scores.sum().clamp(min=1)

        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="none").sum() / normaliser

        fg = assigned.fg_mask
        if fg.any():
            weight = target_scores.sum(-1)[fg]
            target_boxes = assigned.target_boxes / strides
            iou = bbox_iou(pred_boxes[fg], target_boxes[fg], "ciou")
            loss_box = ((1 - iou) * weight).sum() / normaliser
            target_ltrb = bbox2dist(anchor_grid, target_boxes, self.bins - 1 - 0.01)[fg]
            pred_dist = box.unflatten(-1, (4, self.bins))[fg]
            loss_dfl = (dfl_loss(pred_dist, target_ltrb) * weight).sum() / normaliser
        else:  # keep the graph connected so backward() works on gt-free batches
            loss_box = loss_dfl = box.sum() * 0.0

        parts = {
            "box": (self.box_gain * loss_box).detach(),
            "cls": (self.cls_gain * loss_cls).detach(),
            "dfl": (self.dfl_gain * loss_dfl).detach(),
        }
        total = self.box_gain * loss_box + self.cls_gain * loss_cls + self.dfl_gain * loss_dfl
        if self.scale_by_batch_size:
            total = total * cls_logits.shape[0]
        return total, parts


class YOLOv6Loss:
    """YOLOv6 v3/v4 detection loss (reference §2.2).

    * assignment: ATSSAssigner(topk 9) while ``epoch < atss_warmup_epochs``, else
      TaskAlignedAssigner(topk 13, alpha 1, beta 6, plain IoU); ``epoch=None`` counts as past warm-up;
    * cls: VariFocal loss (alpha 0.75, gamma 2), summed, / target-score sum when that sum > 1;
    * box: (1 - SIoU or 1 - GIoU, eps 1e-10) weighted by target score, same normaliser;
    * dfl (only when ``bins > 0``): targets clipped to ``bins - 1 - 0.01``, same weighting;
    * total = 1.0 cls + 2.5 box + 0.5 dfl. Not multiplied by the batch size: reference §2.2 states
      no such scaling for YOLOv6 (unverified against its source), unlike YOLOv8's ``loss * batch_size``.
    """

    def __init__(
        self,
        num_classes: int,
        bins: int = 0,
        iou_type: str = "giou",
        cls_weight: float = 1.0,
        iou_weight: float = 2.5,
        dfl_weight: float = 0.5,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        atss_warmup_epochs: int = 0,
        atss_topk: int = 9,
        min_candidate_size: float = 0.0,
    ) -> None:
        if iou_type not in ("siou", "giou", "ciou", "diou", "iou"):
            raise ValueError(f"YOLOv6Loss iou_type must be one of siou/giou/ciou/diou/iou, got {iou_type!r}")
        if bins == 1 or bins < 0:
            raise ValueError(f"YOLOv6Loss bins must be 0 (plain ltrb) or >= 2 (DFL), got {bins}")
        self.num_classes, self.bins, self.iou_type = num_classes, bins, iou_type
        self.cls_weight, self.iou_weight, self.dfl_weight = cls_weight, iou_weight, dfl_weight
        self.atss_warmup_epochs = atss_warmup_epochs
        self.tal = TaskAlignedAssigner(topk, num_classes, alpha, beta, iou_kind="iou",
                                       min_candidate_size=min_candidate_size)
        self.atss = ATSSAssigner(atss_topk, num_classes)

    def __call__(
        self, raw: Mapping[str, Any], targets: torch.Tensor, epoch: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with _full_precision(raw):
            return self._compute(raw, targets, epoch)

    def _compute(
        self, raw: Mapping[str, Any], targets: torch.Tensor, epoch: int | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if int(raw["bins"]) != self.bins:
            raise ValueError(f"raw['bins']={raw['bins']} but YOLOv6Loss was built with bins={self.bins}")
        cls_logits, box, anchors, strides, anchor_grid, pred_boxes, gt_labels, gt_boxes, mask_gt = _prepare(
            raw, targets, self.num_classes
        )
        pred_boxes_px = pred_boxes.detach() * strides
        if epoch is not None and epoch < self.atss_warmup_epochs:
            assigned = self.atss(anchors, strides, gt_labels, gt_boxes, mask_gt, pred_boxes_px)
        else:
            assigned = self.tal(cls_logits.detach().sigmoid(), pred_boxes_px, anchors, gt_labels, gt_boxes, mask_gt)
        target_scores = assigned.target_scores
        score_sum = target_scores.sum()
        # YOLOv6 divides only when the sum exceeds 1 (avoids blowing up on near-empty batches)
        normaliser = torch.where(score_sum > 1, score_sum, torch.ones_like(score_sum))

        one_hot = F.one_hot(assigned.target_labels, self.num_classes + 1)[..., : self.num_classes].float()
        loss_cls = varifocal_loss(cls_logits, target_scores, one_hot) / normaliser

        fg = assigned.fg_mask
        if fg.any():
            weight = target_scores.sum(-1)[fg]
            target_boxes = assigned.target_boxes / strides
            iou = bbox_iou(pred_boxes[fg], target_boxes[fg], self.iou_type, eps=1e-10)
            loss_box = ((1 - iou) * weight).sum() / normaliser
            if self.bins > 0:
                target_ltrb = bbox2dist(anchor_grid, target_boxes, self.bins - 1 - 0.01)[fg]
                pred_dist = box.unflatten(-1, (4, self.bins))[fg]
                loss_dfl = (dfl_loss(pred_dist, target_ltrb) * weight).sum() / normaliser
            else:
                loss_dfl = box.sum() * 0.0
        else:  # keep the graph connected so backward() works on gt-free batches
            loss_box = loss_dfl = box.sum() * 0.0

        parts = {
            "box": (self.iou_weight * loss_box).detach(),
            "cls": (self.cls_weight * loss_cls).detach(),
            "dfl": (self.dfl_weight * loss_dfl).detach(),
        }
        total = self.cls_weight * loss_cls + self.iou_weight * loss_box + self.dfl_weight * loss_dfl
        return total, parts
