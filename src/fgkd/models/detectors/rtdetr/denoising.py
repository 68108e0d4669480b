"""Contrastive denoising queries (DN-DETR / DINO, as RT-DETR trains with them).

For a batch whose largest image has G ground truths, ``groups = max(num_denoising // G, 1)``; every group holds
two blocks of G queries per image, a positive block (boxes jittered by less than half their size) and a
negative one (jittered by 1-2 half-sizes, to be predicted as background); labels are flipped to a random class
with probability ``label_noise_ratio / 2``. Padding slots (images with fewer than G boxes) carry the padding
class (a zero embedding) when the embedding has one. Attention: matching queries never see denoising queries
and the groups do not see each other. Query order: ``[group 0 (pos, neg), group 1 (pos, neg), …, matching]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_convert

from fgkd.models.detectors.rtdetr.decoder import inverse_sigmoid


def denoising_queries(labels: list[torch.Tensor], boxes: list[torch.Tensor], class_embed: torch.nn.Embedding,
                      num_classes: int, num_queries: int, num_denoising: int = 100, label_noise_ratio: float = 0.5,
                      box_noise_scale: float = 1.0, generator: torch.Generator | None = None) -> dict[str, Any] | None:
    """``labels[i] int[G_i]``, ``boxes[i] float[G_i, 4]`` (cx, cy, w, h in [0, 1]) per image -> the denoising
    part of the decoder input, or ``None`` when there is nothing to denoise.

    Returns ``{"content" [B, N, hidden], "reference" [B, N, 4] logits, "attn_mask" bool [N+Q, N+Q] (True =
    blocked), "num_dn" N, "groups", "positive" list of int[G_i · groups] query indices per image}``.
    """
    counts = [int(lab.numel()) for lab in labels]
    max_gt = max(counts, default=0)
    if num_denoising <= 0 or max_gt == 0:
        return None
    device = boxes[0].device
    batch = len(labels)
    groups = max(num_denoising // max_gt, 1)
    padded_labels = torch.full((batch, max_gt), num_classes, dtype=torch.long, device=device)
    padded_boxes = torch.zeros(batch, max_gt, 4, device=device)
    real = torch.zeros(batch, max_gt, dtype=torch.bool, device=device)
    for i, (lab, box) in enumerate(zip(labels, boxes, strict=True)):
        padded_labels[i, : lab.numel()] = lab.long()
        padded_boxes[i, : lab.numel()] = box.float()
        real[i, : lab.numel()] = True
    # [B, 2·groups·G]: block k (size G) is positive for even k and negative for odd k
    dn_labels = padded_labels.repeat(1, 2 * groups)
    dn_boxes = padded_boxes.repeat(1, 2 * groups, 1)
    real = real.repeat(1, 2 * groups)
    negative = torch.zeros(batch, 2 * max_gt, 1, device=device)
    negative[:, max_gt:] = 1
    negative = negative.repeat(1, groups, 1)
    if label_noise_ratio > 0:
        flip = torch.rand(dn_labels.shape, device=device, generator=generator) < label_noise_ratio * 0.5
        random_labels = torch.randint(0, num_classes, dn_labels.shape, device=device, generator=generator)
        dn_labels = torch.where(flip & real, random_labels, dn_labels)
    if box_noise_scale > 0:
        corners = box_convert(dn_boxes, "cxcywh", "xyxy")
        half = (dn_boxes[..., 2:] * 0.5).repeat(1, 1, 2) * box_noise_scale
        sign = torch.randint(0, 2, dn_boxes.shape, device=device, generator=generator).float() * 2 - 1
        part = torch.rand(dn_boxes.shape, device=device, generator=generator)
        part = (part + 1.0) * negative + part * (1 - negative)
        corners = (corners + sign * part * half).clamp(0, 1)
        dn_boxes = box_convert(corners, "xyxy", "cxcywh")
    if class_embed.padding_idx is None:  # no padding row (Ultralytics' layout): zero content for the pads
        content = class_embed(dn_labels.masked_fill(~real, 0)) * real[..., None]
    else:
        content = class_embed(dn_labels)
    num_dn = 2 * groups * max_gt
    size = num_dn + num_queries
    group_of = torch.arange(num_dn, device=device) // (2 * max_gt)
    attn_mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    attn_mask[num_dn:, :num_dn] = True
    attn_mask[:num_dn, :num_dn] = group_of[:, None] != group_of[None, :]
    positive_slots = (real & (negative.squeeze(-1) == 0))
    # query index of ground truth g of image i in group k: k·2G + g (kept in the order g varies fastest per group)
    positive = [torch.nonzero(positive_slots[i]).squeeze(-1) for i in range(batch)]
    return {"content": content, "reference": inverse_sigmoid(dn_boxes), "attn_mask": attn_mask, "num_dn": num_dn,
            "groups": groups, "positive": positive, "counts": counts}
