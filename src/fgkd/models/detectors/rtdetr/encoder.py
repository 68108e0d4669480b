"""RT-DETR's hybrid encoder: AIFI (one transformer layer on the stride-32 map) + CCFM (a CSP-RepVGG PAN).

From the RT-DETR paper (Zhao et al., CVPR 2024, §4.2) and the official config facts (detectors.md §3.4, §4):
input projections (1×1 conv + BN) to ``hidden`` = 256 channels; AIFI: post-norm transformer encoder layer
(8 heads, FFN 1024, GELU, dropout 0) with 2-D sine-cosine position embeddings (temperature 10000); CCFM:
top-down (lateral 1×1 conv, nearest ×2 upsample, concat, CSPRepLayer) then bottom-up (3×3/2 conv, concat,
CSPRepLayer); a CSPRepLayer is two 1×1 branches, three RepVGG blocks (3×3 + 1×1, SiLU) on one, summed, and a
1×1 conv when its hidden width (``expansion × out``) differs from ``out`` (r18: expansion 0.5; r50 and L: 1.0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fgkd.models.detectors.common import ConvBNAct
from fgkd.models.detectors.yolov6_blocks import RepVGGBlock


def sincos_position_embedding(w: int, h: int, dim: int = 256, temperature: float = 10000.0,
                              device: torch.device | None = None) -> torch.Tensor:
    """``[1, w*h, dim]`` 2-D sine-cosine embedding in the official ordering.

    The official code builds the grid with ``meshgrid(arange(w), arange(h), indexing="ij")`` and flattens it,
    so for a row-major ``[H, W]`` feature flattening the first "w" coordinate follows the row index on square
    maps; kept as is, because pretrained AIFI weights were trained with exactly this embedding.
    """
    if dim % 4:
        raise ValueError(f"the sine-cosine embedding needs a dimension divisible by 4, got {dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32, device=device),
                                    torch.arange(h, dtype=torch.float32, device=device), indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim)
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], 1)[None]


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: ``x = norm1(x + attn(x + pos, x + pos, x)); x = norm2(x + ffn(x))``."""

    def __init__(self, dim: int = 256, heads: int = 8, ffn: int = 1024, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.dropout(self.self_attn(q, q, value=x, need_weights=False)[0]))
        return self.norm2(x + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(x))))))


class AIFI(nn.Module):
    """Attention-based intra-scale feature interaction on one map ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, dim: int = 256, heads: int = 8, ffn: int = 1024, temperature: float = 10000.0) -> None:
        super().__init__()
        self.layer = TransformerEncoderLayer(dim, heads, ffn)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pos = sincos_position_embedding(w, h, c, self.temperature, x.device).to(x.dtype)
        out = self.layer(x.flatten(2).permute(0, 2, 1), pos)
        return out.permute(0, 2, 1).reshape(b, c, h, w).contiguous()


class CSPRepLayer(nn.Module):
    """Two 1×1 branches; RepVGG blocks on the first; their sum, projected when hidden != out (RepC3)."""

    def __init__(self, c_in: int, c_out: int, blocks: int = 3, expansion: float = 1.0, bn_eps: float = 1e-5) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.conv1 = _conv(c_in, hidden, 1, 1, "silu", bn_eps)
        self.conv2 = _conv(c_in, hidden, 1, 1, "silu", bn_eps)
        self.bottlenecks = nn.Sequential(*(_rep_block(hidden, bn_eps) for _ in range(blocks)))
        self.conv3 = _conv(hidden, c_out, 1, 1, "silu", bn_eps) if hidden != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


def _conv(c_in: int, c_out: int, kernel: int, stride: int, act: str, bn_eps: float) -> ConvBNAct:
    block = ConvBNAct(c_in, c_out, kernel, stride, act=act)
    block.bn = nn.BatchNorm2d(c_out, eps=bn_eps)
    return block


def _rep_block(channels: int, bn_eps: float) -> RepVGGBlock:
    """RT-DETR's RepVGG block: 3×3 + 1×1 conv-BN, SiLU, no identity branch."""
    block = RepVGGBlock(channels, channels, act="silu", identity=False)
    for branch in (block.dense, block.pointwise):
        branch.bn = nn.BatchNorm2d(channels, eps=bn_eps)
    return block


class HybridEncoder(nn.Module):
    """``[P3, P4, P5]`` backbone maps -> three ``hidden``-channel maps (strides 8, 16, 32)."""

    def __init__(self, in_channels: tuple[int, int, int], hidden: int = 256, heads: int = 8, ffn: int = 1024,
                 expansion: float = 1.0, blocks: int = 3, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.input_proj = nn.ModuleList(_conv(c, hidden, 1, 1, "none", bn_eps) for c in in_channels)
        self.aifi = AIFI(hidden, heads, ffn)
        levels = len(in_channels)
        self.lateral_convs = nn.ModuleList(_conv(hidden, hidden, 1, 1, "silu", bn_eps) for _ in range(levels - 1))
        self.fpn_blocks = nn.ModuleList(CSPRepLayer(2 * hidden, hidden, blocks, expansion, bn_eps) for _ in range(levels - 1))
        self.downsample_convs = nn.ModuleList(_conv(hidden, hidden, 3, 2, "silu", bn_eps) for _ in range(levels - 1))
        self.pan_blocks = nn.ModuleList(CSPRepLayer(2 * hidden, hidden, blocks, expansion, bn_eps) for _ in range(levels - 1))
        self.out_channels = (hidden,) * levels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        projected = [proj(f) for proj, f in zip(self.input_proj, features, strict=True)]
        projected[-1] = self.aifi(projected[-1])
        # top-down (CCFM FPN): from P5 towards P3
        inner = [projected[-1]]
        for step, low in enumerate(reversed(projected[:-1])):
            high = self.lateral_convs[step](inner[0])
            inner[0] = high
            up = F.interpolate(high, size=low.shape[-2:], mode="nearest")
            inner.insert(0, self.fpn_blocks[step](torch.cat([up, low], 1)))
        # bottom-up (PAN): from P3 towards P5
        outs = [inner[0]]
        for step, high in enumerate(inner[1:]):
            down = self.downsample_convs[step](outs[-1])
            outs.append(self.pan_blocks[step](torch.cat([down, high], 1)))
        return outs
