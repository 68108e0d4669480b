"""RT-DETR's decoder head: IoU-aware query selection, a deformable-attention decoder with iterative box
refinement, and the per-layer class / box heads.

From the RT-DETR paper (§4.3-4.4), Deformable DETR (Zhu et al. 2021, Eq. 2-3) and the config facts of
detectors.md §3.4 (hidden 256, 300 queries, 4 points per level and head, 8 heads, FFN 1024, ReLU, dropout 0;
6 decoder layers, 3 for r18; 100 denoising queries):

* encoder memory = the three encoder maps, each through 1×1 conv + BN, flattened and concatenated;
* anchors per level ``(cx, cy, w, h) = ((i + 0.5) / W, (j + 0.5) / H, 0.05·2^l, 0.05·2^l)`` in logit space, those
  with a coordinate outside ``(0.01, 0.99)`` invalid (memory zeroed there, logit +inf);
* query selection: ``enc_output`` (Linear + LayerNorm) on the memory, class scores by ``enc_score_head``, the top
  ``num_queries`` by their best class; their features (detached) are the decoder's initial content queries and
  ``enc_bbox_head(feature) + anchor`` its reference boxes (detached);
* decoder layer: self-attention (q = k = content + MLP(box) position), deformable cross-attention sampling
  ``ref_xy + offset / n_points · ref_wh · 0.5`` on every level, FFN; post-norm; after layer i the box is refined
  as ``σ(head_i(x) + σ⁻¹(ref))`` and the next layer starts from it detached. In training, the box of layer i > 0
  that the loss sees is refined from the previous layer's *undetached* box (the paper's
  "look forward twice").
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fgkd.models.detectors.common import ConvBNAct


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, c_in: int, hidden: int, c_out: int, num_layers: int) -> None:
        super().__init__()
        dims = [c_in] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [c_out], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def multi_scale_deformable_attention(value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor,
                                     weights: torch.Tensor) -> torch.Tensor:
    """Deformable DETR Eq. 3 with ``grid_sample`` (bilinear, zero padding, align_corners=False).

    ``value [B, S, heads, d]`` (S = Σ H·W), ``locations [B, Q, heads, levels, points, 2]`` in [0, 1],
    ``weights [B, Q, heads, levels, points]`` -> ``[B, Q, heads·d]``.
    """
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(b * heads, d, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [B·heads, Q, points, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B·heads, d, Q, levels·points]
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    return (stacked * w).sum(-1).view(b, heads * d, q).transpose(1, 2).contiguous()


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable attention with box references (offsets scaled by the reference's size)."""

    def __init__(self, dim: int = 256, heads: int = 8, levels: int = 3, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden dim {dim} must be divisible by the number of heads {heads}")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Deformable DETR init: zero offset weights; biases point each head in its own direction, the k-th point
        # k+1 times as far; uniform attention; Xavier projections.
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True).values).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1)
        grid *= torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """``query [B, Q, dim]``, ``reference [B, Q, 4]`` (cx, cy, w, h in [0, 1]), ``memory [B, S, dim]``."""
        b, q, _ = query.shape
        value = self.value_proj(memory).view(b, memory.shape[1], self.heads, self.dim // self.heads)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points).softmax(-1)
        weights = weights.view(b, q, self.heads, self.levels, self.points)
        ref = reference[:, :, None, None, None, :]
        locations = ref[..., :2] + offsets / self.points * ref[..., 2:] * 0.5
        return self.output_proj(multi_scale_deformable_attention(value, shapes, locations, weights))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 8, ffn: int = 1024, levels: int = 3, points: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformableAttention(dim, heads, levels, points)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor, shapes: list[tuple[int, int]],
                pos: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.dropout(self.self_attn(q, q, value=x, attn_mask=attn_mask, need_weights=False)[0]))
        x = self.norm2(x + self.dropout(self.cross_attn(x + pos, reference, memory, shapes)))
        return self.norm3(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


def generate_anchors(shapes: list[tuple[int, int]], grid_size: float = 0.05, eps: float = 1e-2,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchors [1, S, 4] in logit space (+inf where invalid), valid [1, S, 1])`` (module docstring)."""
    anchors = []
    for level, (h, w) in enumerate(shapes):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                                torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
        xy = (torch.stack([xs, ys], -1) + 0.5) / torch.tensor([w, h], dtype=torch.float32, device=device)
        wh = torch.full_like(xy, grid_size * 2.0**level)
        anchors.append(torch.cat([xy, wh], -1).view(1, h * w, 4))
    anchors = torch.cat(anchors, 1)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    logits = torch.log(anchors / (1 - anchors)).masked_fill(~valid, float("inf"))
    return logits, valid


class RTDETRDecoder(nn.Module):
    """Query selection + decoder + heads. ``forward`` returns the raw dict the criterion reads (see model.py)."""

    def __init__(self, num_classes: int, in_channels: tuple[int, ...] = (256, 256, 256), hidden: int = 256,
                 num_queries: int = 300, points: int = 4, heads: int = 8, layers: int = 6, ffn: int = 1024,
                 dropout: float = 0.0, eval_idx: int = -1, dn_padding_class: bool = True, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.num_classes, self.hidden, self.num_queries = num_classes, hidden, num_queries
        self.num_layers = layers
        self._warned_sizes: set[int] = set()
        self.eval_idx = eval_idx if eval_idx >= 0 else layers + eval_idx
        if not 0 <= self.eval_idx < layers:
            raise ValueError(f"eval_idx {eval_idx} is outside the {layers} decoder layers")
        self.input_proj = nn.ModuleList(_proj(c, hidden, bn_eps) for c in in_channels)
        self.layers = nn.ModuleList(DecoderLayer(hidden, heads, ffn, len(in_channels), points, dropout)
                                    for _ in range(layers))
        # the official code keeps one extra, zero "padding" class row (denoising pads); Ultralytics' port has none
        self.dn_padding_class = dn_padding_class
        self.denoising_class_embed = (nn.Embedding(num_classes + 1, hidden, padding_idx=num_classes)
                                      if dn_padding_class else nn.Embedding(num_classes, hidden))
        self.query_pos_head = MLP(4, 2 * hidden, hidden, 2)
        self.enc_output = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden))
        self.enc_score_head = nn.Linear(hidden, num_classes)
        self.enc_bbox_head = MLP(hidden, hidden, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden, num_classes) for _ in range(layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden, hidden, 4, 3) for _ in range(layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        prior = -math.log((1 - 0.01) / 0.01)  # class-score bias for a 1 % prior (focal-loss init)
        for head in [self.enc_score_head, *self.dec_score_head]:
            nn.init.constant_(head.bias, prior)
        for mlp in [self.enc_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)

    def memory(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        projected = [proj(f) for proj, f in zip(self.input_proj, features, strict=True)]
        shapes = [(int(p.shape[2]), int(p.shape[3])) for p in projected]
        return torch.cat([p.flatten(2).transpose(1, 2) for p in projected], 1), shapes

    def queries_for(self, tokens: int) -> int:
        """The queries selected from ``tokens`` encoder tokens: ``num_queries``, or all tokens on inputs too small
        for that many (under 128 px for 300 queries), with a warning."""
        if tokens >= self.num_queries:
            return self.num_queries
        if tokens not in self._warned_sizes:
            self._warned_sizes.add(tokens)
            warnings.warn(f"RT-DETR: {tokens} encoder tokens at this input size < num_queries={self.num_queries}; "
                          f"selecting {tokens} (use imgsz >= 128 for 300 queries)", stacklevel=3)
        return tokens

    def forward(self, features: list[torch.Tensor], denoising: dict[str, Any] | None = None) -> dict[str, Any]:
        memory, shapes = self.memory(features)
        b, tokens, _ = memory.shape
        anchors, valid = generate_anchors(shapes, device=memory.device)
        selected = self.enc_output(valid.to(memory.dtype) * memory)
        enc_logits_all = self.enc_score_head(selected)
        top = enc_logits_all.max(-1).values.topk(self.queries_for(tokens), dim=1).indices  # [B, nq]
        top_features = selected.gather(1, top[..., None].expand(-1, -1, self.hidden))
        top_anchors = anchors.expand(b, -1, -1).gather(1, top[..., None].expand(-1, -1, 4))
        reference = self.enc_bbox_head(top_features) + top_anchors  # logits
        enc_boxes = reference.sigmoid()
        enc_logits = enc_logits_all.gather(1, top[..., None].expand(-1, -1, self.num_classes))
        content = top_features.detach()
        reference = reference.detach()
        attn_mask, num_dn = None, 0
        if denoising is not None:
            content = torch.cat([denoising["content"].to(content.dtype), content], 1)
            reference = torch.cat([denoising["reference"].to(reference.dtype), reference], 1)
            attn_mask, num_dn = denoising["attn_mask"], int(denoising["num_dn"])
        elif self.training:  # a batch without boxes: keep the embedding in the graph (DDP needs every gradient)
            content = content + 0.0 * self.denoising_class_embed.weight.sum()
        boxes, logits = self.decode(content, reference, memory, shapes, attn_mask)
        return {"boxes": boxes[:, :, num_dn:], "logits": logits[:, :, num_dn:],
                "dn_boxes": boxes[:, :, :num_dn] if num_dn else None, "dn_logits": logits[:, :, :num_dn] if num_dn else None,
                "enc_boxes": enc_boxes, "enc_logits": enc_logits}

    def decode(self, x: torch.Tensor, reference_logits: torch.Tensor, memory: torch.Tensor,
               shapes: list[tuple[int, int]], attn_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(boxes [L', B, Q, 4], logits [L', B, Q, nc])``: every layer in training, the ``eval_idx`` layer otherwise."""
        boxes, logits = [], []
        reference = reference_logits.sigmoid()
        previous: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            x = layer(x, reference, memory, shapes, self.query_pos_head(reference), attn_mask)
            delta = self.dec_bbox_head[i](x)
            refined = (delta + inverse_sigmoid(reference)).sigmoid()
            if self.training:
                logits.append(self.dec_score_head[i](x))
                boxes.append(refined if previous is None else (delta + inverse_sigmoid(previous)).sigmoid())
            elif i == self.eval_idx:
                logits.append(self.dec_score_head[i](x))
                boxes.append(refined)
                break
            previous = refined
            reference = refined.detach() if self.training else refined
        return torch.stack(boxes), torch.stack(logits)


def _proj(c_in: int, c_out: int, bn_eps: float) -> ConvBNAct:
    block = ConvBNAct(c_in, c_out, 1, 1, act="none")
    block.bn = nn.BatchNorm2d(c_out, eps=bn_eps)
    return block
