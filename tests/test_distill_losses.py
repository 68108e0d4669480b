"""Tests for fgkd.distill.losses: golden values computed by hand, gradcheck, invariances, errors, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fgkd.distill.losses import KD_LOSSES, build_kd_loss

CONF_KD = Path(__file__).resolve().parents[1] / "conf" / "kd"
LN3 = math.log(3.0)
# KL(Bern(3/4) ‖ Bern(1/2)) = KL([3/4, 1/4] ‖ [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2) ≈ 0.130812
KL_34_VS_HALF = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def maps(*values: float, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def close(actual: torch.Tensor, expected: float, atol: float = 1e-10) -> None:
    assert actual.dim() == 0, actual.shape
    torch.testing.assert_close(
        actual.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


# --------------------------------------------------------------------------------------------- registry


def test_registry_and_flags():
    assert set(KD_LOSSES) == {"none", "cs", "mse", "mmd", "cwd", "kl"}
    for name in KD_LOSSES:
        loss = build_kd_loss(name)
        assert loss.name == name
        assert loss.enabled == (name != "none")
        assert loss.uses_logits == (name == "kl")
    with pytest.raises(ValueError, match="unknown KD loss 'cosine'.*cs, cwd, kl, mmd, mse, none"):
        build_kd_loss("cosine")
    with pytest.raises(TypeError, match="bad parameters for KD loss 'cwd'.*temperature"):
        build_kd_loss("cwd", temperature=2.0)  # cwd calls it tau
    with pytest.raises(ValueError, match="variant"):
        build_kd_loss("mmd", variant="gaussian")


def test_none_returns_zero():
    loss = build_kd_loss("none")
    assert not loss.enabled
    close(loss(), 0.0)
    feats = [torch.rand(2, 3, 4, 4)]
    close(loss(feats, feats), 0.0)


@pytest.mark.parametrize("path", sorted(CONF_KD.glob("[!_]*.yaml")), ids=lambda p: p.stem)
def test_kd_configs_build(path):
    cfg = OmegaConf.merge(OmegaConf.load(CONF_KD / "_base.yaml"), OmegaConf.load(path))
    cfg.pop("defaults")
    assert set(cfg) == {"name", "params", "teacher_view", "taps", "teacher_taps", "layers", "fuse_teacher"}
    assert cfg.name == path.stem
    assert cfg.teacher_view in ("preprocessed", "original")
    assert cfg.taps is None and cfg.layers is None and cfg.fuse_teacher is True
    loss = build_kd_loss(cfg.name, **OmegaConf.to_container(cfg.params))
    assert loss.name == path.stem
    assert {p.stem for p in CONF_KD.glob("[!_]*.yaml")} == set(KD_LOSSES)


# --------------------------------------------------------------------------------------------- golden values


def test_cs_golden():
    # tap 0: N=2 samples, each a 2-element map [C=2, H=1, W=1]
    #   sample 0: s=(1,0), t=(0,1): cos 0  -> distance 1
    #   sample 1: s=(1,0), t=(-1,0): cos -1 -> distance 2          batch mean = 1.5
    # tap 1: N=1, s=(1,1), t=(3,0): cos = 3/(√2·3) = 1/√2         -> distance 1 - 1/√2
    s0, t0 = maps(1, 0, 1, 0, shape=(2, 2, 1, 1)), maps(0, 1, -1, 0, shape=(2, 2, 1, 1))
    s1, t1 = maps(1, 1, shape=(1, 2, 1, 1)), maps(3, 0, shape=(1, 2, 1, 1))
    loss = build_kd_loss("cs")
    close(loss([s0], [t0]), 1.5)
    close(loss([s0, s1], [t0, t1]), 1.5 + 1 - 1 / math.sqrt(2))
    per_tap = loss.per_tap([s0, s1], [t0, t1])
    close(per_tap[1], 1 - 1 / math.sqrt(2))
    # flatten covers C, H and W together: (1,0 | 0,0) vs (0,0 | 1,0) as [1, 2, 1, 2] maps are orthogonal
    close(loss([maps(1, 0, 0, 0, shape=(1, 2, 1, 2))], [maps(0, 0, 1, 0, shape=(1, 2, 1, 2))]), 1.0)
    # eps: an all-zero student map has cos 0 (norm floored at eps), distance 1, no NaN
    close(loss([torch.zeros(1, 2, 1, 1, dtype=torch.float64)], [t1]), 1.0)


def test_cs_invariances():
    torch.manual_seed(0)
    s, t = torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.randn(3, 4, 5, 5, dtype=torch.float64)
    loss = build_kd_loss("cs")
    scale = torch.tensor([3.0, 0.01, 250.0], dtype=torch.float64).view(3, 1, 1, 1)  # per-sample scales
    torch.testing.assert_close(loss([s * scale], [t]), loss([s], [t]))
    torch.testing.assert_close(loss([s], [t * scale]), loss([s], [t]))
    close(loss([s], [s.clone()]), 0.0, atol=1e-12)
    assert 0.0 <= loss([s], [t]).item() <= 2.0


def test_mse_golden():
    # tap 0: s = [[1,2],[3,4]], t = 0 -> (1 + 4 + 9 + 16) / 4 = 7.5
    # tap 1: s = (1,1), t = (0,3)     -> (1 + 4) / 2 = 2.5          sum over taps = 10
    s0, t0 = maps(1, 2, 3, 4, shape=(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    s1, t1 = maps(1, 1, shape=(1, 2, 1, 1)), maps(0, 3, shape=(1, 2, 1, 1))
    loss = build_kd_loss("mse")
    close(loss([s0], [t0]), 7.5)
    close(loss([s0, s1], [t0, t1]), 10.0)
    close(loss([s0], [s0.clone()]), 0.0)


def test_mmd_fixed_bandwidth_golden():
    # 1-D samples x = (0, 1) (student), y = (2, 4) (teacher); one Gaussian k(a,b) = exp(-(a-b)²/β), β = 2.
    # mean K_XX = (2 + 2e^{-1/2})/4, mean K_YY = (2 + 2e^{-2})/4,
    # mean K_XY = (e^{-4/2} + e^{-16/2} + e^{-1/2} + e^{-9/2})/4
    # MMD² = K_XX + K_YY - 2 K_XY = 1 - (e^{-4.5} + e^{-8})/2 ≈ 0.994278
    x, y = maps(0, 1, shape=(2, 1)), maps(2, 4, shape=(2, 1))
    loss = build_kd_loss("mmd", kernel_num=1, bandwidth=2.0)
    close(loss([x], [y]), 1 - (math.exp(-4.5) + math.exp(-8)) / 2)


def test_mmd_data_driven_bandwidth_and_kernel_family():
    # Pairwise squared distances of {0, 1, 2, 4}: 1, 4, 16, 1, 9, 4 (sum 35), each counted twice over the
    # 4·3 = 12 off-diagonal entries: β = 70 / 12 = 35/6.
    x, y = maps(0, 1, shape=(2, 1)), maps(2, 4, shape=(2, 1))
    data_driven = build_kd_loss("mmd", kernel_num=1)([x], [y])
    close(data_driven, build_kd_loss("mmd", kernel_num=1, bandwidth=35 / 6)([x], [y]).item())
    # the default family is the sum of 5 single kernels at β·{1/4, 1/2, 1, 2, 4} (MMD² is linear in k)
    family = sum(
        build_kd_loss("mmd", kernel_num=1, bandwidth=35 / 6 * m)([x], [y]) for m in (0.25, 0.5, 1, 2, 4)
    )
    close(build_kd_loss("mmd")([x], [y]), family.item())


def test_mmd_bandwidth_is_detached():
    # β is a constant for autograd (kd_losses.md §2b): the gradient equals that of a fixed bandwidth = β
    torch.manual_seed(0)
    student = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    z = torch.cat([student.detach().flatten(1), teacher.flatten(1)])
    beta = torch.cdist(z, z).pow(2).sum().item() / (6 * 5)  # mean over the 6·5 off-diagonal entries
    (grad_data,) = torch.autograd.grad(build_kd_loss("mmd")([student], [teacher]), student)
    (grad_fixed,) = torch.autograd.grad(build_kd_loss("mmd", bandwidth=beta)([student], [teacher]), student)
    torch.testing.assert_close(grad_data, grad_fixed)


def test_mmd_invariances_and_batch_of_one():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.randn(4, 3, 4, 4, dtype=torch.float64)
    loss = build_kd_loss("mmd")
    close(loss([s], [s.clone()]), 0.0, atol=1e-12)  # identical batches
    close(loss([torch.zeros_like(s)], [torch.zeros_like(s)]), 0.0)  # all distances 0: β floored, no NaN
    torch.testing.assert_close(loss([10 * s], [10 * t]), loss([s], [t]))  # β scales with the data
    assert loss([s], [t]).item() > 0
    # B = 1 with the data-driven β: the constant 2·Σ_q (1 - exp(-1/m_q)) ≈ 6.186 carries no information, so the
    # term is 0 with a warning; with a fixed β it is the two-sample value 2·(1 - exp(-d²/β)) (kernel_num 1)
    one_s = s[:1].clone().requires_grad_(True)
    with pytest.warns(UserWarning, match="batch of one"):
        value = loss([one_s], [t[:1]])
    close(value, 0.0)
    (grad,) = torch.autograd.grad(value, one_s)
    assert float(grad.abs().max()) == 0.0
    d2 = float((s[:1] - t[:1]).pow(2).sum())
    close(build_kd_loss("mmd", kernel_num=1, bandwidth=50.0)([s[:1]], [t[:1]]), 2 * (1 - math.exp(-d2 / 50.0)))


def test_mmd_is_exact_in_float32_with_a_shared_offset_and_close_maps():
    """Issue 15.1: the Gram form |a|²+|b|²−2ab gave −1.5e-3 (true 2.2e-6) and a gradient off by ~100 %."""
    torch.manual_seed(0)
    teacher = (100.0 + torch.randn(4, 8, 6, 6, dtype=torch.float64)).float().double()
    student = (teacher + 1e-3 * torch.rand_like(teacher)).float().double()  # both exactly representable in fp32
    loss = build_kd_loss("mmd")
    s64 = student.clone().requires_grad_(True)
    reference = loss([s64], [teacher])
    (grad64,) = torch.autograd.grad(reference, s64)
    s32 = student.float().requires_grad_(True)
    value = loss([s32], [teacher.float()])
    (grad32,) = torch.autograd.grad(value, s32)
    assert value.item() >= 0
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)
    assert float((grad32.double() - grad64).norm() / grad64.norm()) < 2e-2


def test_mmd_nst_and_linear_golden():
    # NST, N=1, C=2 channels over HW=2 positions (already unit L2 per channel):
    #   student channels (1,0), (0,1); teacher channels (1,0), (1,0); k(a,b) = (aᵀb)²
    #   K_SS = [[1,0],[0,1]] mean 1/2; K_TT = all 1, mean 1; K_ST = [[1,1],[0,0]] mean 1/2
    #   loss = 1/2 + 1 - 2·1/2 = 1/2
    s, t = maps(1, 0, 0, 1, shape=(1, 2, 2, 1)), maps(1, 0, 1, 0, shape=(1, 2, 2, 1))
    nst = build_kd_loss("mmd", variant="nst")
    close(nst([s], [t]), 0.5)
    close(nst([3 * s], [t]), 0.5)  # channels are L2-normalised
    # the teacher may have more channels: its third channel (0,1) gives K_TT mean (1+1+0 + 1+1+0 + 0+0+1)/9 = 5/9,
    # K_ST = [[1,1,0],[0,0,1]] mean 3/6 = 1/2 -> 1/2 + 5/9 - 1 = 1/18
    t3 = maps(1, 0, 1, 0, 0, 1, shape=(1, 3, 2, 1))
    close(nst([s], [t3]), 1 / 18)
    # linear: x = (0, 1), y = (2, 4) -> (mean x - mean y)² = (0.5 - 3)² = 6.25
    close(
        build_kd_loss("mmd", variant="linear")([maps(0, 1, shape=(2, 1))], [maps(2, 4, shape=(2, 1))]), 6.25
    )


def test_cwd_golden():
    # one map [N=1, C=1, H=2, W=1]: student (0, 0) -> softmax (1/2, 1/2); teacher (ln 3, 0) -> (3/4, 1/4)
    # KL(T ‖ S) = 3/4 ln(3/2) + 1/4 ln(1/2); τ = 1, N·C = 1
    s, t = maps(0, 0, shape=(1, 1, 2, 1)), maps(LN3, 0, shape=(1, 1, 2, 1))
    close(build_kd_loss("cwd")([s], [t]), KL_34_VS_HALF)
    # τ = 2: teacher softmax((ln 3)/2, 0) = (p, 1-p) with p = √3/(√3+1); times τ² = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected = 4 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    close(build_kd_loss("cwd", tau=2.0)([s], [t]), expected)
    # /(N·C): two samples × two channels, each channel carrying the same pair -> the same value
    close(build_kd_loss("cwd")([s.repeat(2, 2, 1, 1)], [t.repeat(2, 2, 1, 1)]), KL_34_VS_HALF)
    # softmax over H·W: adding a constant per channel changes nothing
    close(build_kd_loss("cwd")([s + 5.0], [t - 2.0]), KL_34_VS_HALF)
    close(build_kd_loss("cwd")([t], [t.clone()]), 0.0)


def test_kl_golden():
    # one anchor, 2 classes: student logits (0, 0); teacher (ln 3, -ln 3) -> sigmoid (3/4, 1/4)
    s, t = maps(0, 0, shape=(1, 1, 2)), maps(LN3, -LN3, shape=(1, 1, 2))
    # sigmoid mode: Σ_c KL(Bern(σ(t_c)) ‖ Bern(1/2)); both classes give KL_34_VS_HALF
    close(build_kd_loss("kl")([s], [t]), 2 * KL_34_VS_HALF)
    # a second, already-matching anchor halves the per-anchor mean
    s2, t2 = torch.cat([s, t], dim=1), torch.cat([t, t], dim=1)
    close(build_kd_loss("kl")([s2], [t2]), KL_34_VS_HALF)
    # softmax mode: softmax(ln 3, 0) = (3/4, 1/4) vs softmax(0, 0) = (1/2, 1/2)
    close(build_kd_loss("kl", mode="softmax")([s], [maps(LN3, 0, shape=(1, 1, 2))]), KL_34_VS_HALF)
    # temperature 2, softmax: teacher softmax((ln 3)/2, 0) = (p, 1-p), times T² = 4 (as for cwd above)
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected = 4 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    close(
        build_kd_loss("kl", mode="softmax", temperature=2.0)([s], [maps(LN3, 0, shape=(1, 1, 2))]), expected
    )
    # yolov6 mode: softmax over sigmoid scores: teacher (3/4, 1/4) -> softmax = (σ(1/2), 1 - σ(1/2)),
    # student (1/2, 1/2) -> uniform
    q = 1 / (1 + math.exp(-0.5))
    close(build_kd_loss("kl", mode="yolov6")([s], [t]), q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q)))
    # a single class: the softmax over classes is identically 1 (no signal), the Bernoulli KL is not
    one_s, one_t = maps(0, shape=(1, 1, 1)), maps(LN3, shape=(1, 1, 1))
    close(build_kd_loss("kl", mode="softmax")([one_s], [one_t]), 0.0)
    close(build_kd_loss("kl")([one_s], [one_t]), KL_34_VS_HALF)


# --------------------------------------------------------------------------------------------- gradients


GRADCHECK_CASES = [
    ("cs", {}, (2, 3, 2, 2)),
    ("mse", {}, (2, 3, 2, 2)),
    # a fixed bandwidth: the data-driven β is detached, so finite differences would see it move
    ("mmd", {"bandwidth": 4.0}, (3, 2, 2, 2)),
    ("mmd", {"variant": "nst"}, (2, 3, 2, 2)),
    ("mmd", {"variant": "linear"}, (3, 2, 2, 2)),
    ("cwd", {"tau": 2.0}, (2, 3, 2, 2)),
    ("kl", {}, (2, 5, 3)),
    ("kl", {"mode": "softmax", "temperature": 2.0}, (2, 5, 3)),
    ("kl", {"mode": "yolov6", "temperature": 2.0}, (2, 5, 3)),
]


@pytest.mark.parametrize(("name", "params", "shape"), GRADCHECK_CASES, ids=lambda v: str(v))
def test_gradcheck_float64(name, params, shape):
    torch.manual_seed(0)
    student = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    teachers = [torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)]
    loss = build_kd_loss(name, **params)
    second = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: loss([a, b], teachers), (student, second))


def test_teacher_is_detached_and_student_gets_gradient():
    torch.manual_seed(0)
    for name in ("cs", "mse", "mmd", "cwd"):
        student = torch.randn(2, 3, 4, 4, requires_grad=True)
        teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
        build_kd_loss(name)([student], [teacher]).backward()
        assert teacher.grad is None, name
        assert student.grad is not None and student.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------------- dtypes / errors


@pytest.mark.parametrize("name", ["cs", "mse", "mmd", "cwd", "kl"])
def test_low_precision_inputs_are_computed_in_fp32(name):
    torch.manual_seed(0)
    shape = (2, 5, 3) if name == "kl" else (2, 3, 4, 4)
    student, teacher = torch.randn(shape), torch.randn(shape)
    loss = build_kd_loss(name)
    reference = loss([student.bfloat16().float()], [teacher.bfloat16().float()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss([student.bfloat16()], [teacher.bfloat16()])
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference)
    assert build_kd_loss(name, compute_dtype="float64")([student], [teacher]).dtype == torch.float64
    assert loss([student.double()], [teacher.double()]).dtype == torch.float64  # float64 stays float64


def test_shape_errors_name_the_tap_and_shapes():
    good = torch.rand(2, 4, 8, 8)
    loss = build_kd_loss("cs")
    with pytest.raises(
        ValueError, match=r"tap 1: spatial size mismatch, student \(2, 4, 8, 8\) vs teacher \(2, 4, 4, 4\)"
    ):
        loss([good, good], [good, torch.rand(2, 4, 4, 4)])
    with pytest.raises(ValueError, match=r"tap 0: channel mismatch.*build_connectors"):
        build_kd_loss("cwd")([good], [torch.rand(2, 8, 8, 8)])
    with pytest.raises(ValueError, match="batch size mismatch"):
        build_kd_loss("mse")([good], [torch.rand(3, 4, 8, 8)])
    with pytest.raises(ValueError, match="2 student taps vs 1 teacher taps"):
        loss([good, good], [good])
    with pytest.raises(ValueError, match="no feature pairs"):
        loss([], [])
    with pytest.raises(TypeError, match="lists of tensors"):
        loss(good, good)
    with pytest.raises(ValueError, match=r"kl: logits 0 must have the same shape"):
        build_kd_loss("kl")([torch.rand(2, 84, 3)], [torch.rand(2, 336, 3)])
    with pytest.raises(ValueError, match="spatial size mismatch"):
        build_kd_loss("mmd", variant="nst")([good], [torch.rand(2, 8, 4, 4)])
