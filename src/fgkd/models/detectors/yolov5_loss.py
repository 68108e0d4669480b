"""The YOLOv5 v7.0 loss: target building with anchor-ratio matching and neighbour cells, CIoU box loss,
objectness BCE against the IoU, class BCE; written from the published facts (detectors.md §3: hyp.scratch-low
box 0.05, obj 1.0, cls 0.5, anchor_t 4.0), no Ultralytics code.

:func:`build_targets` (per level, grid units): a ground truth matches an anchor when ``max(r, 1/r) < anchor_t``
for both side ratios ``r = wh_gt / wh_anchor``; besides its own cell, the two neighbour cells whose centre is
nearer than half a cell (left/right, up/down: ``frac < 0.5`` and not on the border) are positives too, so each
box has up to 3 cells × 3 anchors per level. :class:`YOLOv5Loss`: at the positives ``xy = 2σ − 0.5`` (offset
from the cell), ``wh = (2σ)² · anchor``; ``lbox = mean(1 − CIoU)``; the objectness target of a positive is its
(detached, clamped) IoU, 0 elsewhere, BCE weighted per level by ``balance = (4.0, 1.0, 0.4)``; ``lcls`` = BCE
with one-hot targets (skipped for one class). Gains as the reference train.py scales them for 3 levels:
``box``, ``cls · nc / 80``, ``obj · (imgsz / 640)²``; the total is multiplied by the batch size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fgkd.models.detectors.iou import bbox_iou

#: objectness weight per level P3, P4, P5
BALANCE = (4.0, 1.0, 0.4)
#: neighbour-cell offsets (own cell, then +x, +y, −x, −y neighbours), times g = 0.5
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


def build_targets(targets: torch.Tensor, anchors: torch.Tensor, stride: int, grid_hw: tuple[int, int],
                  anchor_t: float = 4.0) -> dict[str, torch.Tensor]:
    """Positives of one level. ``targets`` ``[M, 6]`` = (image, class, x1, y1, x2, y2) in input pixels; ``anchors``
    ``[na, 2]`` in pixels. Returns ``image, anchor, gj, gi`` (long ``[n]``), ``box`` (``[n, 4]``: xy offset from
    the cell and wh, grid units), ``anchor_wh`` (``[n, 2]`` grid units), ``cls`` (long ``[n]``)."""
    device = targets.device
    h, w = grid_hw
    anchor_grid = anchors.to(device).float() / stride
    xy = (targets[:, 2:4] + targets[:, 4:6]) / 2 / stride
    wh = (targets[:, 4:6] - targets[:, 2:4]) / stride
    if targets.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return {"image": empty, "anchor": empty, "gj": empty, "gi": empty, "cls": empty,
                "box": torch.zeros(0, 4, device=device), "anchor_wh": torch.zeros(0, 2, device=device)}
    ratio = wh[None] / anchor_grid[:, None]  # [na, M, 2]
    matched = torch.maximum(ratio, 1 / ratio).amax(2) < anchor_t  # [na, M]
    anchor_idx, target_idx = matched.nonzero(as_tuple=True)
    gxy = xy[target_idx]
    gxi = torch.tensor([w, h], device=device, dtype=gxy.dtype) - gxy  # distances from the far border
    left, up = ((gxy % 1 < 0.5) & (gxy > 1)).T  # nearer the cell to the left / above
    right, down = ((gxi % 1 < 0.5) & (gxi > 1)).T
    use = torch.stack([torch.ones_like(left), left, up, right, down])  # [5, n], in _OFFSETS order
    offsets = _OFFSETS.to(device)[:, None].expand(5, gxy.shape[0], 2)[use]
    rep_anchor, rep_target = anchor_idx.repeat(5, 1)[use], target_idx.repeat(5, 1)[use]
    gxy = xy[rep_target]
    gij = (gxy - offsets).long()
    gi, gj = gij[:, 0].clamp(0, w - 1), gij[:, 1].clamp(0, h - 1)
    return {"image": targets[rep_target, 0].long(), "anchor": rep_anchor, "gj": gj, "gi": gi,
            "cls": targets[rep_target, 1].long(),
            "box": torch.cat([gxy - torch.stack([gi, gj], 1).to(gxy.dtype), wh[rep_target]], 1),
            "anchor_wh": anchor_grid[rep_anchor]}


def _xywh_to_xyxy(box: torch.Tensor) -> torch.Tensor:
    return torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], 1)


class YOLOv5Loss:
    """``(total, {"box", "obj", "cls"})`` of a YOLOv5 raw output and targets (module docstring)."""

    def __init__(self, num_classes: int, box_gain: float = 0.05, obj_gain: float = 1.0, cls_gain: float = 0.5,
                 anchor_t: float = 4.0) -> None:
        self.num_classes, self.anchor_t = num_classes, anchor_t
        self.box_gain, self.obj_gain, self.cls_gain = box_gain, obj_gain, cls_gain * num_classes / 80

    def __call__(self, raw: dict[str, Any], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        levels = raw["levels"]
        device = levels[0].device
        zero = torch.zeros((), device=device)
        lbox, lobj, lcls = zero.clone(), zero.clone(), zero.clone()
        targets = targets.to(device).float()
        for level, anchors, stride, balance in zip(levels, raw["anchors"], raw["strides"], BALANCE, strict=True):
            level = level.float()
            pos = build_targets(targets, anchors, int(stride), tuple(level.shape[2:4]), self.anchor_t)
            tobj = torch.zeros(level.shape[:4], device=device)
            if pos["image"].numel():
                picked = level[pos["image"], pos["anchor"], pos["gj"], pos["gi"]]  # [n, 5 + nc]
                pxy = picked[:, 0:2].sigmoid() * 2 - 0.5
                pwh = (picked[:, 2:4].sigmoid() * 2) ** 2 * pos["anchor_wh"]
                iou = bbox_iou(_xywh_to_xyxy(torch.cat([pxy, pwh], 1)), _xywh_to_xyxy(pos["box"]), kind="ciou")
                lbox = lbox + (1.0 - iou).mean()
                tobj[pos["image"], pos["anchor"], pos["gj"], pos["gi"]] = iou.detach().clamp(0).to(tobj.dtype)
                if self.num_classes > 1:
                    onehot = F.one_hot(pos["cls"], self.num_classes).to(picked.dtype)
                    lcls = lcls + F.binary_cross_entropy_with_logits(picked[:, 5:], onehot)
            lobj = lobj + F.binary_cross_entropy_with_logits(level[..., 4], tobj) * balance
        height, width = raw["imgsz"]
        obj_gain = self.obj_gain * (max(height, width) / 640) ** 2
        parts = {"box": lbox * self.box_gain, "obj": lobj * obj_gain, "cls": lcls * self.cls_gain}
        batch = levels[0].shape[0]
        total = (parts["box"] + parts["obj"] + parts["cls"]) * batch
        return total, {k: v.detach() for k, v in parts.items()}
