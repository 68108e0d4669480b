"""MS-CAM and iAFF (attentional feature fusion): shapes, the formulas, parameter counts, the second branch used."""

from __future__ import annotations

import pytest
import torch

from fgkd.models.anomaly.components import MSCAM, ChannelContext, IterativeAFF


def _branch_params(c: int, r: int) -> int:
    inter = c // r
    return (c * inter + inter) + 2 * inter + (inter * c + c) + 2 * c  # conv, BN, conv, BN


@pytest.mark.parametrize(("channels", "r"), [(320, 8), (3072, 8), (64, 4)])
def test_shapes_and_parameter_counts(channels, r):
    x = torch.randn(2, channels, 4, 4)
    assert MSCAM(channels, r)(x).shape == x.shape
    assert IterativeAFF(channels, r)(x, torch.randn_like(x)).shape == x.shape
    assert sum(p.numel() for p in MSCAM(channels, r).parameters()) == 2 * _branch_params(channels, r)
    assert sum(p.numel() for p in IterativeAFF(channels, r).parameters()) == 4 * _branch_params(channels, r)


def test_formulas_against_a_manual_computation():
    torch.manual_seed(0)
    x, y = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 5, 5)
    cam = MSCAM(16, 4).eval()
    ctx = cam.context
    local = ctx.local_branch(x)
    glob = ctx.global_branch(x)
    assert glob.shape == (2, 16, 1, 1)
    torch.testing.assert_close(cam(x), x * torch.sigmoid(local + glob))
    fuse = IterativeAFF(16, 4).eval()
    w = torch.sigmoid(fuse.first.local_branch(x + y) + fuse.first.global_branch(x + y))
    z = x * w + y * (1 - w)
    w2 = torch.sigmoid(fuse.second.local_branch(z) + fuse.second.global_branch(z))
    torch.testing.assert_close(fuse(x, y), x * w2 + y * (1 - w2))


def test_zero_logits_give_half_weights_and_the_second_global_branch_is_used():
    x, y = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 3)
    fuse = IterativeAFF(8, 2).eval()
    for module in fuse.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and module.num_features == 8:
            torch.nn.init.zeros_(module.weight)  # the last BN of every branch: logits 0, weights 0.5
    torch.testing.assert_close(fuse(x, y), (x + y) / 2)
    torch.nn.init.ones_(fuse.second.global_branch[-1].bias)  # only the second pass's GLOBAL branch
    assert not torch.allclose(fuse(x, y), (x + y) / 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels >= r"):
        ChannelContext(4, 8)
    with pytest.raises(ValueError, match="one shape"):
        IterativeAFF(8)(torch.zeros(1, 8, 2, 2), torch.zeros(1, 8, 4, 4))
