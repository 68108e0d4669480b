"""YOLOv6 v3.0/v4.0 building blocks, written from the facts in shared/reference/detectors.md §2.1.

RepVGG block (re-parameterisable into one 3×3 conv), BottleRep / BepC3 (CSP stage with learnable residual
scale), SPPF variants and the BiFusion node of the RepBiFPAN neck. Every block that carries BatchNorm has
``fuse()``; ``fuse_blocks(module)`` converts a whole model for deployment (Conv+BN folding, RepVGG
re-parameterisation), keeping eval outputs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fgkd.models.detectors.common import BN_EPS, BN_MOMENTUM, ConvBNAct, make_activation

#: ``block(c_in, c_out, stride)`` -> the basic 3×3 block of a stage (RepVGG or ConvBNSiLU)
BlockFactory = Callable[[int, int, int], nn.Module]


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv_bn_to_kernel_bias(
    weight: torch.Tensor, bn: nn.BatchNorm2d, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that follows a conv (``weight``, optional ``bias``) into kernel + bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv_bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (conv_bias - bn.running_mean) * scale


class RepVGGBlock(nn.Module):
    """3×3 conv-BN + 1×1 conv-BN (+ identity BN when ``c_in == c_out`` and stride 1), summed, then ReLU.

    ``fuse()`` re-parameterises the branches into a single 3×3 conv with bias (RepVGG, Ding et al. 2021):
    the 1×1 kernel is zero-padded to 3×3 and the identity is a 3×3 kernel with a centred 1 per channel.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: str = "relu", identity: bool = True) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.act = make_activation(act)
        # branch registration order as in the reference (identity, 3×3, 1×1): eases converting its checkpoints;
        # ``identity=False``: no identity branch even where shapes allow it (RT-DETR's CSPRepLayer blocks)
        self.identity = _batch_norm(c_out) if identity and c_in == c_out and stride == 1 else None
        self.dense = ConvBNAct(c_in, c_out, 3, stride, act="none")
        self.pointwise = ConvBNAct(c_in, c_out, 1, stride, padding=0, act="none")
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        out = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    @torch.no_grad()
    def fuse(self) -> None:
        """Collapse the three branches into ``self.reparam`` (eval statistics); idempotent."""
        if self.reparam is not None:
            return
        kernel, bias = self._branch_kernel_bias(self.dense)
        kernel_1x1, bias_1x1 = self._branch_kernel_bias(self.pointwise)
        kernel = kernel + F.pad(kernel_1x1, [1, 1, 1, 1])
        bias = bias + bias_1x1
        if self.identity is not None:
            eye = torch.zeros_like(kernel)
            eye[torch.arange(self.c_out), torch.arange(self.c_in), 1, 1] = 1.0
            kernel_id, bias_id = _conv_bn_to_kernel_bias(eye, self.identity)
            kernel, bias = kernel + kernel_id, bias + bias_id
        conv = self.dense.conv
        self.reparam = nn.Conv2d(self.c_in, self.c_out, 3, self.stride, 1, bias=True).to(kernel)
        self.reparam.weight.copy_(kernel)
        self.reparam.bias.copy_(bias)
        self.reparam.train(conv.training)
        del self.dense, self.pointwise, self.identity
        self.identity = None

    @staticmethod
    def _branch_kernel_bias(branch: ConvBNAct) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(branch.bn, nn.BatchNorm2d):
            return _conv_bn_to_kernel_bias(branch.conv.weight, branch.bn, branch.conv.bias)
        return branch.conv.weight, branch.conv.bias  # already Conv+BN-fused


def block_factory(training_mode: str) -> BlockFactory:
    """The basic 3×3 block: ``repvgg`` -> RepVGGBlock (ReLU), ``conv_silu`` -> ConvBNSiLU (YOLOv6-L)."""
    if training_mode == "repvgg":
        return lambda c_in, c_out, stride=1: RepVGGBlock(c_in, c_out, stride)
    if training_mode == "conv_silu":
        return lambda c_in, c_out, stride=1: ConvBNAct(c_in, c_out, 3, stride, act="silu")
    raise ValueError(f"unknown YOLOv6 training_mode {training_mode!r}; choose 'repvgg' or 'conv_silu'")


def rep_stage(c_in: int, c_out: int, repeats: int, block: BlockFactory) -> nn.Sequential:
    """``repeats`` basic blocks in sequence (the reference ``RepBlock``), the first one changing width."""
    return nn.Sequential(*(block(c_in if i == 0 else c_out, c_out, 1) for i in range(repeats)))


class BottleRep(nn.Module):
    """Two basic blocks with a residual scaled by a learnable scalar ``alpha`` (init 1) when widths match."""

    def __init__(self, c_in: int, c_out: int, block: BlockFactory) -> None:
        super().__init__()
        self.conv1 = block(c_in, c_out, 1)
        self.conv2 = block(c_out, c_out, 1)
        self.shortcut = c_in == c_out
        self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + self.alpha * x if self.shortcut else out


class BepC3(nn.Module):
    """CSP stage: two 1×1 branches; one runs ``repeats // 2`` BottleReps; concat; 1×1 to ``c_out``.

    Hidden width is ``int(c_out * e)``; the 1×1 convs use ReLU, or SiLU when the basic block is ConvBNSiLU.
    """

    def __init__(self, c_in: int, c_out: int, repeats: int, e: float, block: BlockFactory, act: str) -> None:
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv3 = ConvBNAct(2 * hidden, c_out, 1, act=act)
        self.m = nn.Sequential(*(BottleRep(hidden, hidden, block) for _ in range(max(repeats // 2, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): 1×1 halve, three chained k×k max-pools, concat of 4, 1×1.

    ``act='relu'`` is the reference ``SimSPPF``, ``act='silu'`` its ``SPPF``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 5, act: str = "relu") -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBNAct(hidden * 4, c_out, 1, act=act)
        self.pool = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((x, y1, y2, self.pool(y2)), dim=1))


class CSPSPPF(nn.Module):
    """CSP variant of SPPF: a 1×1 shortcut branch beside a (1×1, 3×3, 1×1, pools, 1×1, 3×3) branch.

    ``act='relu'`` is the reference ``SimCSPSPPF`` (n/s), ``act='silu'`` its ``CSPSPPF``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 5, e: float = 0.5, act: str = "relu") -> None:
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv2 = ConvBNAct(c_in, hidden, 1, act=act)
        self.cv3 = ConvBNAct(hidden, hidden, 3, act=act)
        self.cv4 = ConvBNAct(hidden, hidden, 1, act=act)
        self.pool = nn.MaxPool2d(kernel, 1, kernel // 2)
        self.cv5 = ConvBNAct(4 * hidden, hidden, 1, act=act)
        self.cv6 = ConvBNAct(hidden, hidden, 3, act=act)
        self.cv7 = ConvBNAct(2 * hidden, c_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        shortcut = self.cv2(x)
        y1 = self.pool(x1)
        y2 = self.pool(y1)
        pooled = self.cv6(self.cv5(torch.cat((x1, y1, y2, self.pool(y2)), dim=1)))
        return self.cv7(torch.cat((shortcut, pooled), dim=1))  # the reference's order (converted weights need it)


class BiFusion(nn.Module):
    """RepBiFPAN fusion node: upsample the coarser map (ConvTranspose2d k2 s2), 1×1 the same-scale map,
    1×1 then 3×3-s2 the finer map, concat the three, 1×1. All convs are ConvBNReLU."""

    def __init__(self, c_same: int, c_fine: int, c_out: int) -> None:
        super().__init__()
        self.cv_same = ConvBNAct(c_same, c_out, 1, act="relu")
        self.cv_fine = ConvBNAct(c_fine, c_out, 1, act="relu")
        self.cv_out = ConvBNAct(3 * c_out, c_out, 1, act="relu")
        self.upsample = nn.ConvTranspose2d(c_out, c_out, kernel_size=2, stride=2, bias=True)
        self.downsample = ConvBNAct(c_out, c_out, 3, 2, act="relu")

    def forward(self, coarse: torch.Tensor, same: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        up = self.upsample(coarse)
        down = self.downsample(self.cv_fine(fine))
        return self.cv_out(torch.cat((up, self.cv_same(same), down), dim=1))


@torch.no_grad()
def fuse_blocks(model: nn.Module) -> nn.Module:
    """Deployment conversion in place: fold every Conv+BN, then re-parameterise every RepVGG block.

    After this no BatchNorm2d is left; BottleRep ``alpha`` stays a parameter. Eval outputs are unchanged
    up to float rounding. Call on an eval-mode model (BN running statistics are what gets folded).
    """
    for module in list(model.modules()):
        if isinstance(module, ConvBNAct):
            module.fuse()
    for module in list(model.modules()):
        if isinstance(module, RepVGGBlock):
            module.fuse()
    return model
