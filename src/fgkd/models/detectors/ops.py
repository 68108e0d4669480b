"""Anchor-free detection geometry shared by YOLOv6 and YOLOv8: anchor points, ltrb <-> xyxy,
DFL decoding, decoding a raw head output to pixel boxes, and NMS post-processing.

Conventions (base.py / reference/detectors.md §2.1, §3.1): anchor points are grid-cell centres
``(i + 0.5) * stride`` in input pixels, levels concatenated stride-8 first, row-major inside a level;
``ltrb`` are distances from an anchor point to the box's left/top/right/bottom sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchvision

__all__ = [
    "make_anchors",
    "dist2bbox",
    "bbox2dist",
    "dfl_decode",
    "decode_ltrb",
    "decode_boxes",
    "postprocess",
    "check_raw",
]


def make_anchors(
    feats: Sequence[torch.Tensor], strides: Sequence[int] | torch.Tensor, offset: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points ``[A, 2]`` (x, y in input pixels) and their strides ``[A, 1]`` for feature maps
    ``feats[i]: [B, C, H_i, W_i]``; dtype and device follow ``feats[0]``."""
    if len(feats) != len(strides):
        raise ValueError(f"make_anchors: got {len(feats)} feature maps but {len(strides)} strides")
    dtype, device = feats[0].dtype, feats[0].device
    points, point_strides = [], []
    for feat, stride in zip(feats, strides, strict=True):
        height, width = feat.shape[-2:]
        stride = float(stride)
        xs = (torch.arange(width, device=device, dtype=dtype) + offset) * stride
        ys = (torch.arange(height, device=device, dtype=dtype) + offset) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), -1).reshape(-1, 2))
        point_strides.append(torch.full((height * width, 1), stride, dtype=dtype, device=device))
    return torch.cat(points), torch.cat(point_strides)


def dist2bbox(ltrb: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` ltrb distances around broadcastable ``anchors [..., 2]`` -> xyxy (same units)."""
    left_top, right_bottom = ltrb.chunk(2, -1)
    return torch.cat((anchors - left_top, anchors + right_bottom), -1)


def bbox2dist(anchors: torch.Tensor, boxes: torch.Tensor, max_dist: float | None = None) -> torch.Tensor:
    """Inverse of :func:`dist2bbox`; with ``max_dist`` the distances are clamped to ``[0, max_dist]``
    (DFL targets must stay below the last bin)."""
    ltrb = torch.cat((anchors - boxes[..., :2], boxes[..., 2:] - anchors), -1)
    return ltrb if max_dist is None else ltrb.clamp(0, max_dist)


def dfl_decode(logits: torch.Tensor, bins: int) -> torch.Tensor:
    """Distribution Focal Loss decoding: ``[..., 4 * bins]`` logits -> ``[..., 4]`` distances, the
    expectation of softmax over the bin values ``0 .. bins - 1`` (per side). Channel layout is
    side-major: channel ``side * bins + bin`` with sides in l, t, r, b order."""
    if logits.shape[-1] != 4 * bins:
        raise ValueError(f"dfl_decode: last dim {logits.shape[-1]} != 4 * bins = {4 * bins}")
    probs = logits.unflatten(-1, (4, bins)).softmax(-1)
    values = torch.arange(bins, device=logits.device, dtype=probs.dtype)
    return probs @ values


def check_raw(raw: Mapping[str, Any]) -> None:
    """Validate a raw detector output (base.DetectorOutput) and fail naming the bad key."""
    missing = [key for key in ("cls", "box", "anchors", "strides", "bins") if key not in raw]
    if missing:
        raise KeyError(f"raw detector output is missing keys {missing}; expected cls/box/anchors/strides/bins")
    cls, box, anchors, strides, bins = raw["cls"], raw["box"], raw["anchors"], raw["strides"], int(raw["bins"])
    if cls.dim() != 3 or box.dim() != 3 or cls.shape[:2] != box.shape[:2]:
        raise ValueError(f"raw['cls'] {tuple(cls.shape)} and raw['box'] {tuple(box.shape)} must be [B, A, *]")
    expected = 4 * bins if bins > 0 else 4
    if box.shape[-1] != expected:
        raise ValueError(f"raw['box'] last dim is {box.shape[-1]} but bins={bins} needs {expected}")
    num_anchors = cls.shape[1]
    if anchors.shape != (num_anchors, 2) or strides.shape != (num_anchors, 1):
        raise ValueError(
            f"raw['anchors'] {tuple(anchors.shape)} / raw['strides'] {tuple(strides.shape)} must be "
            f"[{num_anchors}, 2] / [{num_anchors}, 1]"
        )


def decode_ltrb(raw: Mapping[str, Any]) -> torch.Tensor:
    """Predicted ltrb distances ``[B, A, 4]`` in stride units (DFL expectation, or the plain output)."""
    bins = int(raw["bins"])
    return dfl_decode(raw["box"], bins) if bins > 0 else raw["box"]


def decode_boxes(raw: Mapping[str, Any]) -> torch.Tensor:
    """Raw head output -> predicted boxes ``[B, A, 4]`` xyxy in input pixels."""
    check_raw(raw)
    return dist2bbox(decode_ltrb(raw) * raw["strides"], raw["anchors"])




@torch.no_grad()
def postprocess(
    raw: Mapping[str, Any],
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    max_nms: int = 30000,
    multi_label: bool = False,
    agnostic: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Decode + :func:`select_detections` (confidence filter + class-wise NMS), per image.

    Scores are ``sigmoid(cls)``. Returns ``[{boxes: [N,4] xyxy px, scores: [N], labels: [N] int64}]``, one dict
    per image.
    """
    full_precision = {key: raw[key].float() for key in ("box", "anchors", "strides")}
    with torch.autocast(device_type=raw["cls"].device.type, enabled=False):  # decode boxes in float32
        boxes = decode_boxes({**raw, **full_precision})
    return select_detections(boxes, raw["cls"].float().sigmoid(), conf, iou, max_det, max_nms, multi_label, agnostic)


@torch.no_grad()
def select_detections(boxes: torch.Tensor, scores: torch.Tensor, conf: float = 0.001, iou: float = 0.7,
                      max_det: int = 300, max_nms: int = 30000, multi_label: bool = False,
                      agnostic: bool = False) -> list[dict[str, torch.Tensor]]:
    """Decoded ``boxes [B, A, 4]`` and class ``scores [B, A, nc]`` -> detections per image: each anchor keeps
    its best class, or with ``multi_label`` every class above ``conf``; at most ``max_nms`` candidates (highest
    scores) enter NMS (``torchvision.ops.batched_nms``, class-wise unless ``agnostic``) and ``max_det``
    detections (sorted by score) come out. Also the NMS of an exported graph's raw outputs (fgkd.predict)."""
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):  # NMS is per image anyway
        if multi_label:
            anchor_idx, labels = (image_scores > conf).nonzero(as_tuple=True)
            kept_scores = image_scores[anchor_idx, labels]
        else:
            kept_scores, labels = image_scores.max(-1)
            anchor_idx = (kept_scores > conf).nonzero(as_tuple=True)[0]
            kept_scores, labels = kept_scores[anchor_idx], labels[anchor_idx]
        if kept_scores.numel() > max_nms:
            top = kept_scores.topk(max_nms).indices
            anchor_idx, labels, kept_scores = anchor_idx[top], labels[top], kept_scores[top]
        kept_boxes = image_boxes[anchor_idx]
        groups = torch.zeros_like(labels) if agnostic else labels
        keep = torchvision.ops.batched_nms(kept_boxes, kept_scores, groups, iou)[:max_det]
        results.append({"boxes": kept_boxes[keep], "scores": kept_scores[keep], "labels": labels[keep].long()})
    return results


def select_top_queries(boxes: torch.Tensor, scores: torch.Tensor, conf: float = 0.001, max_det: int = 300,
                       multi_label: bool = False) -> list[dict[str, torch.Tensor]]:
    """NMS-free selection for set-prediction heads (RT-DETR): ``boxes [B, Q, 4]`` xyxy, ``scores [B, Q, nc]``.

    ``multi_label``: the ``max_det`` best (query, class) pairs of the flattened ``Q·nc`` scores (the official
    RT-DETR post-processor); otherwise every query's best class, sorted (the Ultralytics RT-DETR validator).
    Pairs at or below ``conf`` are dropped."""
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        nc = image_scores.shape[-1]
        if multi_label:
            top_scores, flat = image_scores.flatten().topk(min(max_det, image_scores.numel()))
            query, labels = flat // nc, flat % nc
        else:
            best, best_labels = image_scores.max(-1)
            top_scores, query = best.topk(min(max_det, best.numel()))
            labels = best_labels[query]
        keep = top_scores > conf
        results.append({"boxes": image_boxes[query[keep]], "scores": top_scores[keep], "labels": labels[keep].long()})
    return results
