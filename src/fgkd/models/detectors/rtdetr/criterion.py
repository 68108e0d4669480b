"""RT-DETR's set criterion: Hungarian matching and VFL + L1 + GIoU, on every decoder layer, the encoder's top-k
proposals and the denoising groups.

Facts (detectors.md §3.4 and §4, the official ``rtdetr_r50vd.yml``; written from them, not from code):

* **matcher** (per image, scipy ``linear_sum_assignment``): ``C = 2·C_class + 5·L1(cxcywh) + 2·(−GIoU)`` with the
  focal-style class cost ``C_class = α(1−p)^γ(−log p) − (1−α)p^γ(−log(1−p))`` at the ground truth's class,
  α 0.25, γ 2;
* **VFL** (varifocal loss, α 0.75, γ 2): BCE-with-logits against ``q·onehot`` where ``q`` is the matched box's
  IoU (0 elsewhere), weighted ``α·σ(x)^γ·(1 − onehot) + q·onehot`` (σ detached), reduced
  ``mean over queries, sum over images and classes, × Q / N`` (N = number of ground truths of the batch);
* **boxes**: ``5·Σ|b − b̂|₁ / N`` and ``2·Σ(1 − GIoU) / N`` over matched pairs;
* the total sums those three terms over the last decoder layer, every earlier layer and the encoder's top-k
  output (each matched on its own), and over every layer's denoising queries, which are matched by
  construction (positive query → its ground truth) with ``N × groups`` as the normaliser.

``parts`` are the three terms summed over all those outputs (``vfl + l1 + giou == total``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, box_iou, generalized_box_iou

Match = tuple[torch.Tensor, torch.Tensor]  # (query indices, ground-truth indices) of one image


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, gt_labels: list[torch.Tensor],
                    gt_boxes: list[torch.Tensor], cost_class: float = 2.0, cost_bbox: float = 5.0,
                    cost_giou: float = 2.0, alpha: float = 0.25, gamma: float = 2.0) -> list[Match]:
    """One-to-one assignment per image. ``logits [B, Q, nc]``, ``boxes [B, Q, 4]`` (cxcywh in [0, 1]);
    ``gt_labels[i] int[G_i]``, ``gt_boxes[i] float[G_i, 4]`` (cxcywh in [0, 1])."""
    b, q, _ = logits.shape
    counts = [int(lab.numel()) for lab in gt_labels]
    empty = torch.empty(0, dtype=torch.long)
    if sum(counts) == 0:
        return [(empty, empty) for _ in range(b)]
    labels = torch.cat(gt_labels).long()
    targets = torch.cat(gt_boxes).float()
    prob = logits.flatten(0, 1).float().sigmoid()[:, labels]  # [B·Q, ΣG]
    positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    flat = boxes.flatten(0, 1).float()
    cost = (cost_class * (positive - negative) + cost_bbox * torch.cdist(flat, targets, p=1)
            - cost_giou * generalized_box_iou(box_convert(flat, "cxcywh", "xyxy"), box_convert(targets, "cxcywh", "xyxy")))
    cost = cost.view(b, q, -1).cpu()
    if not torch.isfinite(cost).all():
        raise FloatingPointError("RT-DETR matching cost is not finite (NaN/inf predictions); lower the learning rate")
    matches = []
    for i, block in enumerate(cost.split(counts, -1)):
        rows, cols = linear_sum_assignment(block[i].numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(np.asarray(cols), dtype=torch.long)))
    return matches


def varifocal_loss(logits: torch.Tensor, matched_iou: torch.Tensor, onehot: torch.Tensor, num_boxes: float,
                   alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """VFL of ``logits [B, Q, nc]`` against IoU-valued targets (module docstring)."""
    target = matched_iou[..., None] * onehot
    weight = alpha * logits.detach().sigmoid().pow(gamma) * (1 - onehot) + target
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


class RTDETRCriterion:
    """``criterion(raw, targets) -> (total, {"vfl", "l1", "giou"})`` for the decoder's raw output."""

    def __init__(self, num_classes: int, vfl_gain: float = 1.0, l1_gain: float = 5.0, giou_gain: float = 2.0,
                 cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 matcher_alpha: float = 0.25, matcher_gamma: float = 2.0, vfl_alpha: float = 0.75,
                 vfl_gamma: float = 2.0) -> None:
        self.num_classes = num_classes
        self.gains = {"vfl": vfl_gain, "l1": l1_gain, "giou": giou_gain}
        self.matcher = dict(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou, alpha=matcher_alpha,
                            gamma=matcher_gamma)
        self.vfl = dict(alpha=vfl_alpha, gamma=vfl_gamma)

    def terms(self, logits: torch.Tensor, boxes: torch.Tensor, gt_labels: list[torch.Tensor],
              gt_boxes: list[torch.Tensor], matches: list[Match], num_boxes: float) -> dict[str, torch.Tensor]:
        """The three weighted terms of one output stack given its matches."""
        device = logits.device
        batch_index = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)]).to(device)
        query_index = torch.cat([rows for rows, _ in matches]).to(device)
        matched_gt = [gt_boxes[i][cols.to(device)] for i, (_, cols) in enumerate(matches)]
        matched_lab = [gt_labels[i][cols.to(device)] for i, (_, cols) in enumerate(matches)]
        target_boxes = torch.cat(matched_gt).float() if matched_gt else boxes.new_zeros(0, 4)
        target_labels = torch.cat(matched_lab).long() if matched_lab else torch.zeros(0, dtype=torch.long, device=device)
        pred = boxes[batch_index, query_index].float()
        pred_xyxy, target_xyxy = box_convert(pred, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        onehot = torch.zeros_like(logits, dtype=torch.float32)
        iou = torch.zeros(logits.shape[:2], device=device)
        if pred.numel():
            onehot[batch_index, query_index, target_labels] = 1.0
            iou[batch_index, query_index] = box_iou(pred_xyxy, target_xyxy).diagonal().detach()
            giou = generalized_box_iou(pred_xyxy, target_xyxy).diagonal()
            l1 = F.l1_loss(pred, target_boxes, reduction="sum") / num_boxes
            giou_loss = (1 - giou).sum() / num_boxes
        else:
            l1 = giou_loss = boxes.sum() * 0.0
        vfl = varifocal_loss(logits.float(), iou, onehot, num_boxes, **self.vfl)
        return {"vfl": self.gains["vfl"] * vfl, "l1": self.gains["l1"] * l1, "giou": self.gains["giou"] * giou_loss}

    def __call__(self, raw: dict[str, Any], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        gt_labels, gt_boxes = normalized_targets(targets, raw["boxes"].shape[1], raw["imgsz"])
        num_boxes = max(float(sum(lab.numel() for lab in gt_labels)), 1.0)
        stacks = [(raw["logits"][i], raw["boxes"][i]) for i in range(raw["boxes"].shape[0])]
        stacks.append((raw["enc_logits"], raw["enc_boxes"]))
        parts = {name: raw["boxes"].new_zeros(()) for name in self.gains}
        for logits, boxes in stacks:
            matches = hungarian_match(logits, boxes, gt_labels, gt_boxes, **self.matcher)
            for name, value in self.terms(logits, boxes, gt_labels, gt_boxes, matches, num_boxes).items():
                parts[name] = parts[name] + value
        denoising = raw.get("dn")
        if denoising is not None and raw.get("dn_boxes") is not None:
            groups = int(denoising["groups"])
            matches = [(positive.cpu(), torch.arange(count).repeat(groups))
                       for positive, count in zip(denoising["positive"], denoising["counts"], strict=True)]
            for i in range(raw["dn_boxes"].shape[0]):
                terms = self.terms(raw["dn_logits"][i], raw["dn_boxes"][i], gt_labels, gt_boxes, matches,
                                   num_boxes * groups)
                for name, value in terms.items():
                    parts[name] = parts[name] + value
        total = parts["vfl"] + parts["l1"] + parts["giou"]
        return total, {name: value.detach() for name, value in parts.items()}


def normalized_targets(targets: torch.Tensor, batch_size: int, imgsz: tuple[int, int]
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``float[M, 6]`` rows ``(image, class, x1, y1, x2, y2)`` in pixels -> per image ``labels`` and
    ``boxes`` (cxcywh normalised by the input size), the form the matcher and the denoising queries use."""
    h, w = imgsz
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=targets.device)
    labels, boxes = [], []
    for i in range(batch_size):
        rows = targets[targets[:, 0] == i]
        labels.append(rows[:, 1].long())
        boxes.append(box_convert(rows[:, 2:6].float() / scale, "xyxy", "cxcywh").clamp(0, 1))
    return labels, boxes
