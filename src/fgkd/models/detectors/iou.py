"""Element-wise IoU family for xyxy boxes: IoU, GIoU, DIoU, CIoU and SIoU.

torchvision.ops has pairwise matrices (``box_iou``…) and reduced losses, but the assigners and
losses need element-wise values on broadcast shapes (``[B,G,1,4]`` vs ``[B,1,A,4]``, or matched
pairs ``[N,4]``), so the formulas are written here:

* GIoU (Rezatofighi et al. 2019): ``IoU - (C - U) / C`` with C the enclosing-box area.
* DIoU / CIoU (Zheng et al. 2020): ``IoU - rho^2 / c^2`` and ``- alpha * v`` with
  ``v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2``, ``alpha = v / (1 - IoU + v)``.
* SIoU (Gevorgyan 2022): ``IoU - (Delta + Omega) / 2`` with angle cost ``Lambda``, distance cost
  ``Delta = sum_t 1 - exp(-(2 - Lambda) rho_t)`` and shape cost ``Omega = sum_t (1 - exp(-omega_t))^4``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["bbox_iou", "IOU_KINDS"]

IOU_KINDS = ("iou", "giou", "diou", "ciou", "siou")
SIOU_SHAPE_THETA = 4.0  # Gevorgyan 2022 uses theta = 4 for the shape cost


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, kind: str = "iou", eps: float = 1e-7) -> torch.Tensor:
    """IoU variant between broadcastable xyxy boxes ``[..., 4]``; returns ``[...]`` (last dim dropped).

    Negative widths/heights (inverted predictions) count as zero area, so the value stays finite.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}; choose one of {IOU_KINDS}")
    x1a, y1a, x2a, y2a = box1.unbind(-1)
    x1b, y1b, x2b, y2b = box2.unbind(-1)
    w1, h1 = (x2a - x1a).clamp(min=0), (y2a - y1a).clamp(min=0)
    w2, h2 = (x2b - x1b).clamp(min=0), (y2b - y1b).clamp(min=0)

    inter = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp(min=0) * (
        torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou

    # smallest enclosing box
    enclose_w = torch.maximum(x2a, x2b) - torch.minimum(x1a, x1b)
    enclose_h = torch.maximum(y2a, y2b) - torch.minimum(y1a, y1b)
    if kind == "giou":
        enclose_area = enclose_w * enclose_h + eps
        return iou - (enclose_area - union) / enclose_area

    centre_dx = (x1b + x2b - x1a - x2a) / 2
    centre_dy = (y1b + y2b - y1a - y2a) / 2
    if kind in ("diou", "ciou"):
        diag_sq = enclose_w**2 + enclose_h**2 + eps
        diou = iou - (centre_dx**2 + centre_dy**2) / diag_sq
        if kind == "diou":
            return diou
        v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))).pow(2)
        # Zheng et al. treat alpha as a trade-off weight, not a function to differentiate through.
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
        return diou - alpha * v

    # SIoU. Angle cost: Lambda = 1 - 2 sin^2(arcsin(sin a) - pi/4) = sin(2a) = 2 |dx| |dy| / sigma^2,
    # where a is the angle between the centre line and the x axis; sin(2a) = sin(2(pi/2 - a)), so the
    # paper's choice between a and beta = pi/2 - a gives the same value.
    sigma_sq = centre_dx**2 + centre_dy**2 + eps
    angle_cost = 2 * centre_dx.abs() * centre_dy.abs() / sigma_sq
    gamma = 2 - angle_cost
    rho_x = (centre_dx / (enclose_w + eps)) ** 2
    rho_y = (centre_dy / (enclose_h + eps)) ** 2
    distance_cost = 2 - torch.exp(-gamma * rho_x) - torch.exp(-gamma * rho_y)
    omega_w = (w1 - w2).abs() / (torch.maximum(w1, w2) + eps)
    omega_h = (h1 - h2).abs() / (torch.maximum(h1, h2) + eps)
    shape_cost = (1 - torch.exp(-omega_w)).pow(SIOU_SHAPE_THETA) + (1 - torch.exp(-omega_h)).pow(SIOU_SHAPE_THETA)
    return iou - (distance_cost + shape_cost) / 2
