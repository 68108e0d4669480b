"""Label assignment for anchor-free YOLO heads: Task-Aligned (TOOD; YOLOv8, YOLOv6) and ATSS
(YOLOv6 warm-up), plus padding of the batch's ``targets[M, 6]`` into per-image ``[B, G, …]`` tensors.

Both assigners are vectorised over batch, gts and anchors (tensors ``[B, G, A]``); the only Python
loop is ATSS's per-level top-k (3-4 levels). Facts: reference/detectors.md §2.2 and §3.2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .iou import bbox_iou

__all__ = ["Assignment", "TaskAlignedAssigner", "ATSSAssigner", "pad_targets", "points_in_boxes"]


class Assignment(NamedTuple):
    """Per-anchor training targets. Background anchors: label ``num_classes``, zero scores,
    ``fg_mask`` False, ``target_gt_idx`` 0 and the box of gt 0 (unused)."""

    target_labels: torch.Tensor  # [B, A] int64
    target_boxes: torch.Tensor  # [B, A, 4] xyxy px
    target_scores: torch.Tensor  # [B, A, nc] soft targets
    fg_mask: torch.Tensor  # [B, A] bool
    target_gt_idx: torch.Tensor  # [B, A] int64, index into the padded gts


def pad_targets(
    targets: torch.Tensor, batch_size: int, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``targets[M, 6]`` rows ``(batch_index, class, x1, y1, x2, y2)`` -> padded per-image tensors
    ``gt_labels [B, G, 1]`` (int64), ``gt_boxes [B, G, 4]`` and ``mask_gt [B, G, 1]`` (bool),
    with ``G`` the largest per-image count (0 when there are no targets)."""
    if targets.dim() != 2 or targets.shape[1] != 6:
        raise ValueError(f"targets must be [M, 6] (batch_index, class, x1, y1, x2, y2), got {tuple(targets.shape)}")
    device = targets.device
    batch_idx = targets[:, 0].long()
    labels = targets[:, 1].long()
    if targets.numel() and (batch_idx.min() < 0 or batch_idx.max() >= batch_size):
        raise ValueError(f"targets batch_index must lie in [0, {batch_size}), got {batch_idx.unique().tolist()}")
    if num_classes is not None and targets.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"target class ids {labels.unique().tolist()} out of range for num_classes={num_classes}; "
            "check the label files against data.yaml 'nc'"
        )
    counts = torch.bincount(batch_idx, minlength=batch_size)
    max_gts = int(counts.max()) if targets.numel() else 0
    gt_labels = torch.zeros(batch_size, max_gts, 1, dtype=torch.long, device=device)
    gt_boxes = torch.zeros(batch_size, max_gts, 4, dtype=targets.dtype, device=device)
    mask_gt = torch.zeros(batch_size, max_gts, 1, dtype=torch.bool, device=device)
    if max_gts:
        order = torch.sort(batch_idx, stable=True).indices
        sorted_batch = batch_idx[order]
        first_of_image = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(order), device=device) - first_of_image[sorted_batch]
        gt_labels[sorted_batch, slot, 0] = labels[order]
        gt_boxes[sorted_batch, slot] = targets[order, 2:]
        mask_gt[sorted_batch, slot, 0] = True
    return gt_labels, gt_boxes, mask_gt


def enlarge_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """``boxes [..., 4]`` xyxy with every side shorter than ``min_size`` widened to it about the box centre."""
    if min_size <= 0:
        return boxes
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]).clamp(min=min_size) / 2
    return torch.cat((centre - half, centre + half), -1)


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``points [A, 2]`` strictly inside ``boxes [B, G, 4]`` -> bool ``[B, G, A]``."""
    px, py = points[:, 0], points[:, 1]
    x1, y1, x2, y2 = (side[..., None] for side in boxes.unbind(-1))  # each [B, G, 1]
    nearest_side = torch.minimum(torch.minimum(px - x1, py - y1), torch.minimum(x2 - px, y2 - py))
    return nearest_side > eps


def _resolve_and_gather(
    mask_pos: torch.Tensor,
    overlaps: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_boxes: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An anchor picked by several gts goes to the gt of highest ``overlaps`` among *all* gts (those that
    did not pick it included), as Ultralytics' and YOLOv6's ``select_highest_overlaps``: for TAL the overlaps
    are non-zero only for the gts that contain the anchor; for ATSS they are the anchor box's IoU with every
    gt. Then gather each anchor's gt label/box. Returns (mask_pos, labels, boxes, fg_mask, gt_idx)."""
    num_gts = mask_pos.shape[1]
    multiple = mask_pos.sum(1) > 1  # [B, A]
    # (max(1).indices rather than argmax(1): argmax over a non-last dim is ~10x slower on CPU)
    best_gt = overlaps.max(1).indices  # [B, A], over every gt
    best_one_hot = F.one_hot(best_gt, num_gts).transpose(1, 2).bool()  # [B, G, A]
    mask_pos = torch.where(multiple[:, None, :], best_one_hot, mask_pos)

    fg_mask = mask_pos.any(1)
    gt_idx = mask_pos.to(overlaps.dtype).max(1).indices  # [B, A]; 0 for background
    labels = gt_labels.squeeze(-1).gather(1, gt_idx)
    labels = torch.where(fg_mask, labels, torch.full_like(labels, num_classes))
    boxes = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))
    return mask_pos, labels, boxes, fg_mask, gt_idx


def _background(batch: int, anchors: int, num_classes: int, like: torch.Tensor) -> Assignment:
    device = like.device
    return Assignment(
        target_labels=torch.full((batch, anchors), num_classes, dtype=torch.long, device=device),
        target_boxes=torch.zeros(batch, anchors, 4, dtype=like.dtype, device=device),
        target_scores=torch.zeros(batch, anchors, num_classes, dtype=like.dtype, device=device),
        fg_mask=torch.zeros(batch, anchors, dtype=torch.bool, device=device),
        target_gt_idx=torch.zeros(batch, anchors, dtype=torch.long, device=device),
    )


class TaskAlignedAssigner:
    """Task-aligned assignment (TOOD). For each gt, among anchor points strictly inside it, pick the
    ``topk`` anchors by ``t = s^alpha * IoU^beta`` (s: predicted score of the gt's class, IoU: predicted
    box vs gt); an anchor picked by several gts goes to the gt of largest IoU among all gts containing it;
    the soft target of a positive is ``t * max_IoU(gt) / max_t(gt)`` (normalised per gt).
    ``min_candidate_size`` (px, 0 = off): for choosing the candidate anchors only, a gt side shorter than it
    is widened to it about the centre (Ultralytics 8.4 uses 16 px: a 10 px gt on the stride-8 grid may
    contain no anchor point at all); the IoU and the targets use the real box.

    YOLOv8: ``topk=10, alpha=0.5, beta=6, iou_kind="ciou"`` (CIoU clamped >= 0);
    YOLOv6: ``topk=13, alpha=1, beta=6, iou_kind="iou"``.
    """

    def __init__(
        self,
        topk: int = 10,
        num_classes: int = 80,
        alpha: float = 0.5,
        beta: float = 6.0,
        eps: float = 1e-9,
        iou_kind: str = "ciou",
        min_candidate_size: float = 0.0,
    ) -> None:
        if iou_kind not in ("iou", "ciou"):
            raise ValueError(f"TaskAlignedAssigner iou_kind must be 'iou' or 'ciou', got {iou_kind!r}")
        if min_candidate_size < 0:
            raise ValueError(f"min_candidate_size must be >= 0 px, got {min_candidate_size}")
        self.min_candidate_size = float(min_candidate_size)
        self.topk, self.num_classes = topk, num_classes
        self.alpha, self.beta, self.eps, self.iou_kind = alpha, beta, eps, iou_kind

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: torch.Tensor,
        pred_boxes: torch.Tensor,
        anchors: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        mask_gt: torch.Tensor,
    ) -> Assignment:
        """``pred_scores [B,A,nc]`` (probabilities), ``pred_boxes [B,A,4]`` px, ``anchors [A,2]`` px,
        ``gt_labels [B,G,1]``, ``gt_boxes [B,G,4]`` px, ``mask_gt [B,G,1]`` (real vs padding)."""
        batch, num_anchors, _ = pred_scores.shape
        num_gts = gt_boxes.shape[1]
        if num_gts == 0:
            return _background(batch, num_anchors, self.num_classes, pred_scores)

        labels = gt_labels.squeeze(-1).long()  # [B, G]
        candidate_boxes = enlarge_small_boxes(gt_boxes, self.min_candidate_size)
        candidates = points_in_boxes(anchors, candidate_boxes) & mask_gt.bool()  # [B, G, A]
        # IoU and scores only on the (few) gt/anchor pairs with the anchor inside the gt
        b_idx, g_idx, a_idx = candidates.nonzero(as_tuple=True)
        pair_iou = bbox_iou(gt_boxes[b_idx, g_idx], pred_boxes[b_idx, a_idx], self.iou_kind).clamp_(min=0)
        pair_score = pred_scores[b_idx, a_idx, labels[b_idx, g_idx]]
        overlaps = torch.zeros(candidates.shape, dtype=pred_scores.dtype, device=pred_scores.device)
        align = torch.zeros_like(overlaps)
        overlaps[b_idx, g_idx, a_idx] = pair_iou.to(overlaps.dtype)
        align[b_idx, g_idx, a_idx] = (pair_score.pow(self.alpha) * pair_iou.pow(self.beta)).to(align.dtype)

        topk_idx = align.topk(min(self.topk, num_anchors), dim=-1).indices  # [B, G, k]
        in_topk = torch.zeros_like(candidates).scatter_(-1, topk_idx, True)
        mask_pos = in_topk & candidates

        mask_pos, target_labels, target_boxes, fg_mask, gt_idx = _resolve_and_gather(
            mask_pos, overlaps, gt_labels, gt_boxes, self.num_classes
        )
        align = align * mask_pos
        max_align = align.amax(-1, keepdim=True)  # [B, G, 1]
        max_overlap = (overlaps * mask_pos).amax(-1, keepdim=True)
        norm = (align * max_overlap / (max_align + self.eps)).amax(1)  # [B, A]
        target_scores = F.one_hot(target_labels, self.num_classes + 1)[..., : self.num_classes]
        target_scores = target_scores.to(pred_scores.dtype) * norm[..., None]
        return Assignment(target_labels, target_boxes, target_scores, fg_mask, gt_idx)


class ATSSAssigner:
    """Adaptive Training Sample Selection (Zhang et al. 2020), YOLOv6's warm-up assigner.

    Anchor boxes are squares of side ``anchor_box_scale * stride`` centred on the anchor points
    (YOLOv6 grid_cell_size 5, reference §2.1). For each gt: the ``topk`` anchors per level closest to
    its centre are candidates; positives are candidates with IoU >= mean + std of the candidates'
    IoUs (unbiased std, as torch.std) whose centre lies inside the gt; ties go to the max-IoU gt.
    Target scores are one-hot, multiplied by the IoU of the predicted box with its gt when
    ``pred_boxes`` is given (YOLOv6's IoU-aware soft targets).
    """

    def __init__(self, topk: int = 9, num_classes: int = 80, anchor_box_scale: float = 5.0, eps: float = 1e-9):
        self.topk, self.num_classes, self.anchor_box_scale, self.eps = topk, num_classes, anchor_box_scale, eps

    @torch.no_grad()
    def __call__(
        self,
        anchors: torch.Tensor,
        strides: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        mask_gt: torch.Tensor,
        pred_boxes: torch.Tensor | None = None,
    ) -> Assignment:
        """``anchors [A,2]`` px and ``strides [A,1]`` (levels contiguous), gts as in TaskAlignedAssigner,
        optional ``pred_boxes [B,A,4]`` px."""
        batch, num_gts = gt_boxes.shape[:2]
        num_anchors = anchors.shape[0]
        if num_gts == 0:
            return _background(batch, num_anchors, self.num_classes, gt_boxes)

        half = strides * self.anchor_box_scale / 2
        anchor_boxes = torch.cat((anchors - half, anchors + half), -1)  # [A, 4]
        overlaps = bbox_iou(gt_boxes[:, :, None, :], anchor_boxes[None, None], "iou")  # [B, G, A]
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        sq_distances = (gt_centres[:, :, None, :] - anchors[None, None]).pow(2).sum(-1)  # [B, G, A]

        level_sizes = torch.unique_consecutive(strides.view(-1), return_counts=True)[1].tolist()
        candidate_idx, start = [], 0
        for size in level_sizes:
            nearest = sq_distances[..., start : start + size].topk(min(self.topk, size), dim=-1, largest=False)
            candidate_idx.append(nearest.indices + start)
            start += size
        candidate_idx = torch.cat(candidate_idx, -1)  # [B, G, C]
        candidate_ious = overlaps.gather(-1, candidate_idx)
        std = candidate_ious.std(-1, keepdim=True) if candidate_idx.shape[-1] > 1 else 0.0
        threshold = candidate_ious.mean(-1, keepdim=True) + std  # [B, G, 1]

        is_candidate = torch.zeros_like(overlaps, dtype=torch.bool).scatter_(-1, candidate_idx, True)
        mask_pos = (
            is_candidate & (overlaps >= threshold) & points_in_boxes(anchors, gt_boxes, self.eps) & mask_gt.bool()
        )
        mask_pos, target_labels, target_boxes, fg_mask, gt_idx = _resolve_and_gather(
            mask_pos, overlaps, gt_labels, gt_boxes, self.num_classes
        )
        target_scores = F.one_hot(target_labels, self.num_classes + 1)[..., : self.num_classes].to(gt_boxes.dtype)
        if pred_boxes is not None:
            pred_overlaps = bbox_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :], "iou") * mask_pos
            target_scores = target_scores * pred_overlaps.amax(1)[..., None]
        return Assignment(target_labels, target_boxes, target_scores, fg_mask, gt_idx)
