"""Building blocks shared by every detector family: Conv-BN-activation and Conv+BN fusion."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

# Both reference frameworks initialise BatchNorm with eps=1e-3 and momentum=0.03
# (ultralytics utils/torch_utils.py::initialize_weights, yolov6/utils/torch_utils.py).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03

_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "none": nn.Identity}


def make_activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name](inplace=True) if name != "none" else nn.Identity()


def autopad(kernel: int, padding: int | None = None, dilation: int = 1) -> int:
    """'same' padding for odd kernels."""
    if padding is not None:
        return padding
    return dilation * (kernel - 1) // 2


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``fuse()`` folds BN into the conv for deployment."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        act: str = "silu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, autopad(kernel, padding), groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the conv (eval-mode statistics); idempotent."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()
        elif isinstance(self.bn, FrozenBatchNorm2d):  # RT-DETR r50's frozen statistics (buffers, not parameters)
            weight, bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
                self.conv.weight, self.conv.bias, self.bn.running_mean, self.bn.running_var, self.bn.eps,
                self.bn.weight, self.bn.bias)
            fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size, self.conv.stride,
                              self.conv.padding, self.conv.dilation, self.conv.groups, bias=True,
                              device=weight.device, dtype=weight.dtype)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            self.conv, self.bn = fused, nn.Identity()
