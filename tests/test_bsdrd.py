"""BSDRD (paper 003, our reading): the DWT round trip (against PyWavelets), parameter counts of every student
and ablation (from the architecture's formulas), MD-GFLoss against its formula, the fused maps, the frozen
teacher and a learning check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import torch

from fgkd.models.anomaly.bsdrd.loss import (
    MDGFLoss,
    channel_cosine_distance,
    spatial_cosine_distance,
    teacher_gates,
)
from fgkd.models.anomaly.bsdrd.torch_model import BSDRD, DetailStudent
from fgkd.models.anomaly.components.bottleneck import DynamicMultiScaleFusion, MultiScaleFusion
from fgkd.models.anomaly.components.wavelet import WaveletTransform2d
from fgkd.models.registry import build_model

WRN = (256, 512, 1024)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def quiet_build(name: str, **options) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random encoders: fine for these checks
        return build_model(name, 1, **options)


def bsdrd(**options) -> BSDRD:
    return quiet_build("bsdrd", **options)


# -- the wavelet transform ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("wave", "level", "mode", "size"), [("haar", 1, "reflect", 16), ("haar", 2, "zero", 16),
                                                            ("db2", 1, "symmetric", 16), ("sym4", 1, "reflect", 13)])
def test_the_dwt_round_trip_reconstructs_its_input(wave, level, mode, size):
    x = torch.randn(2, 5, size, size + 2, dtype=torch.float64)
    dwt = WaveletTransform2d(wave, level, mode)
    ll, highs = dwt(x)
    assert len(highs) == level and all(h.shape[1] == 3 for h in highs)
    assert (dwt.inverse(ll, highs, (size, size + 2)) - x).abs().max() < 1e-5
    assert (dwt.inverse(ll.float(), [h.float() for h in highs], (size, size + 2)) - x.float()).abs().max() < 1e-5


def test_haar_bands_equal_pywavelets_and_carry_gradients():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    ll, (high,) = WaveletTransform2d("haar", 1)(x)
    ref_ll, (ref_h, ref_v, ref_d) = pywt.dwt2(x.detach()[0, 1].numpy(), "haar")
    np.testing.assert_allclose(ll.detach()[0, 1].numpy(), ref_ll, atol=1e-12)
    for k, ref in enumerate((ref_h, ref_v, ref_d)):
        np.testing.assert_allclose(high.detach()[0, k, 1].numpy(), ref, atol=1e-12)
    # Haar is orthonormal: the energy is kept, so the gradient of the total energy is 2x
    energy = ll.pow(2).sum() + high.pow(2).sum()
    assert float(energy.detach()) == pytest.approx(float(x.detach().pow(2).sum()), rel=1e-12)
    energy.backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_bad_wavelet_options_are_named():
    with pytest.raises(ValueError, match="model.wavelet='nope'"):
        WaveletTransform2d("nope")
    with pytest.raises(ValueError, match="wavelet_level"):
        WaveletTransform2d("haar", 0)
    with pytest.raises(ValueError, match="cannot transform a 4x4"):
        WaveletTransform2d("db2", 2)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="model.bands"):
        DetailStudent(WRN, bands=["ll", "xx"])


# -- what is built --------------------------------------------------------------------------------------------
def conv(c_in, c_out, k):
    return c_in * c_out * k * k


def bn(c):
    return 2 * c


def detail_count(width=512, bands=("ll", "lh", "hl", "hh"), level=1, c=WRN) -> int:
    """The detail student's parameters, term by term from its description (torch_model docstring)."""
    c1, c2, c3 = c
    n = sum(b in bands for b in ("lh", "hl", "hh"))
    low = (conv(c3, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
           + conv(width, width, 3) + bn(width) + conv(width, c3, 1) + bn(c3)) if "ll" in bands else 0
    high = level * (conv(n * c3, width, 1) + bn(width) + conv(width, width, 3) + bn(width)
                    + conv(width, width, 3) + bn(width) + conv(width, n * c3, 1) + bn(n * c3)) if n else 0
    head = conv(c3, c3, 1) + bn(c3)

    def inverse_block(ci, co):  # branch 1: ConvT4 + BN; branch 2: Conv3 + BN + ReLU + ConvT4 + BN
        return conv(ci, co, 4) + bn(co) + conv(ci, co, 3) + bn(co) + conv(co, co, 4) + bn(co)

    return low + high + head + inverse_block(c3, c2) + inverse_block(c2, c1)


def test_parameter_counts_of_the_students_and_the_ablations():
    rd = quiet_build("rd")
    rd_count = count(rd)
    assert rd_count == 83_802_624  # RD4AD official (MFF 10.6 M + OCE 48.3 M + de-ResNet 24.9 M)
    struct = bsdrd(students="struct")
    assert count(struct) == rd_count + 3  # + the three scale logits
    assert "detail" not in struct.students and struct.mdgf is not None
    detail = bsdrd(students="detail")
    assert count(detail) == detail_count() == 40_522_240
    both = bsdrd()
    assert count(both) == count(struct) + count(detail)
    assert count(bsdrd(md_gfloss=False)) == count(both) and bsdrd(md_gfloss=False).mdgf is None
    assert count(bsdrd(md_gates="learned")) == count(both) + 2 + 3  # a log-gate per dimension and per level
    hidden = 1024 // 16
    assert count(bsdrd(struct_fusion="attention")) == count(both) - 3 + (1024 * hidden + hidden) + (hidden * 3 + 3)
    assert count(bsdrd(struct_fusion="concat")) == count(both) - 3
    assert count(bsdrd(students="detail", bands=["ll"])) == detail_count(bands=("ll",))
    assert count(bsdrd(students="detail", bands=["lh", "hh"], wavelet_level=2)) == detail_count(bands=("lh", "hh"), level=2)
    with pytest.raises(ValueError, match="model.students"):
        bsdrd(students="three")
    with pytest.raises(ValueError, match="model.student_fusion"):
        bsdrd(student_fusion="mean")


def test_dynamic_fusion_reduces_to_rd4ad_mff_with_equal_weights_and_weights_per_image():
    torch.manual_seed(0)
    levels = [torch.randn(2, 256, 16, 16), torch.randn(2, 512, 8, 8), torch.randn(2, 1024, 4, 4)]
    plain = MultiScaleFusion(WRN).eval()
    for weighting in ("softmax", "concat"):
        dynamic = DynamicMultiScaleFusion(WRN, weighting=weighting).eval()
        dynamic.load_state_dict(plain.state_dict(), strict=False)
        torch.testing.assert_close(dynamic(levels), plain(levels))  # logits start at 0: weights 1, 1, 1
    attention = DynamicMultiScaleFusion(WRN, weighting="attention").eval()
    w = attention.scale_weights(attention.branches(levels))
    assert w.shape == (2, 3) and torch.allclose(w.sum(1), torch.full((2,), 3.0))
    assert not torch.allclose(w[0], w[1])  # per image


# -- MD-GFLoss ------------------------------------------------------------------------------------------------
def test_mdgf_terms_and_fusion_follow_their_formulas():
    torch.manual_seed(0)
    teacher = [torch.rand(2, 4, 6, 6), torch.rand(2, 8, 3, 3)]
    student = [torch.rand(2, 4, 6, 6), torch.rand(2, 8, 3, 3)]
    plain = MDGFLoss(levels=2, feature_gates=False, weights={"channel": 0.5, "spatial": 2.0})
    terms = plain.terms(teacher, student)
    for k, (t, s) in enumerate(zip(teacher, student, strict=True)):
        cos_hw = torch.nn.functional.cosine_similarity(t.flatten(2), s.flatten(2), dim=2)
        cos_c = torch.nn.functional.cosine_similarity(t, s, dim=1)
        assert float(terms[0, k]) == pytest.approx(float((1 - cos_hw).mean()), abs=1e-6)
        assert float(terms[1, k]) == pytest.approx(float((1 - cos_c).mean()), abs=1e-6)
    assert float(plain(teacher, student)) == pytest.approx(float(0.5 * terms[0].sum() + 2.0 * terms[1].sum()), abs=1e-6)
    assert float(plain(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)

    learned = MDGFLoss(levels=2, gates="learned", feature_gates=False)
    loss = learned(teacher, student)
    assert float(loss) == pytest.approx(float(terms.sum()), abs=1e-6)  # gates start at exp(0) = 1
    loss.backward()
    # d/da_d Σ_k (e^{-(a_d+b_k)} T_dk + a_d + b_k) at 0 = Σ_k (1 − T_dk)
    torch.testing.assert_close(learned.dim_log_gate.grad, (1 - terms.detach()).sum(1))
    torch.testing.assert_close(learned.scale_log_gate.grad, (1 - terms.detach()).sum(0))

    channel, spatial = teacher_gates(teacher[0])
    assert torch.allclose(channel.mean(1), torch.ones(2)) and torch.allclose(spatial.mean((1, 2)), torch.ones(2))
    gated = MDGFLoss(levels=2).terms(teacher, student)
    expected = (channel_cosine_distance(teacher[0], student[0]) * channel).mean()
    assert float(gated[0, 0]) == pytest.approx(float(expected), abs=1e-6)
    expected = (spatial_cosine_distance(teacher[0], student[0]) * spatial).mean()
    assert float(gated[1, 0]) == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match="md_gates"):
        MDGFLoss(gates="soft")


# -- the assembled model --------------------------------------------------------------------------------------
def small(**options) -> BSDRD:
    return bsdrd(encoder="resnet18", oce_blocks=1, detail_width=64, **options)


def test_the_map_fuses_both_students_and_the_loss_adds_mdgf():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = small().eval()
    teacher, students = model(x)
    assert set(students) == {"struct", "detail"}
    for levels in students.values():
        assert [tuple(f.shape[1:]) for f in levels] == [tuple(t.shape[1:]) for t in teacher]
    per_student = model.student_maps(teacher, students, (64, 64))
    from fgkd.models.anomaly.components.anomaly_map import gaussian_blur

    maps, scores = model.predict(x)
    torch.testing.assert_close(maps, gaussian_blur(per_student.sum(0), 4.0))
    torch.testing.assert_close(scores, maps.amax((-2, -1)))
    model.student_fusion = "max"
    torch.testing.assert_close(model.predict(x)[0], gaussian_blur(per_student.amax(0), 4.0))
    model.student_fusion = "normalized"
    model.map_scale.copy_(torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(model.predict(x)[0], gaussian_blur(per_student[0] / 2 + per_student[1] / 0.5, 4.0))

    from fgkd.models.anomaly.reverse_distillation.loss import flat_cosine_loss

    without = small(md_gfloss=False)
    without.load_state_dict(model.state_dict())
    expected = sum(flat_cosine_loss(teacher, s) for s in students.values())
    assert float(without.eval().loss(teacher, students)) == pytest.approx(float(expected), abs=1e-5)
    mdgf = model.mdgf.fuse(sum(model.mdgf.terms(teacher, s) for s in students.values()))
    assert float(model.loss(teacher, students)) == pytest.approx(float(expected + mdgf), abs=1e-5)
    parts = model.loss_parts(teacher, students)
    assert {"struct_flat", "detail_flat", "struct_pixel", "detail_pixel", "md_gfloss"} <= set(parts)


def test_training_moves_the_students_not_the_teacher_and_lowers_the_loss():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    model = small(md_gates="learned", student_fusion="normalized").train()
    encoder_state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.005, betas=(0.5, 0.999))
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        teacher, students = model(x)
        loss = model.loss(teacher, students)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, encoder_state[k], msg=k)  # frozen: BN statistics too
    assert not torch.allclose(model.map_scale, torch.ones(2))  # the running map level of each student
    assert not torch.allclose(model.mdgf.dim_log_gate, torch.zeros(2))


# -- through the real entry point -----------------------------------------------------------------------------
TINY_TILES = ["task=anomaly", "data=synthtiles", "scale=smoke", "epochs=1", "batch_size=4", "num_workers=0",
              "logger=none", "imgsz=64", "data.synthtiles.height=48", "data.synthtiles.num_train=6",
              "data.synthtiles.num_test_free=3", "data.synthtiles.num_test_per_defect=1",
              "model.encoder.name=resnet18", "model.oce_blocks=1", "model.detail_width=32",
              "trainer.enable_progress_bar=false"]


def test_train_bsdrd_on_synthtiles_and_the_exported_model_reproduces_the_metrics(compose_train, tmp_path):
    from pathlib import Path

    from fgkd.config import validate
    from fgkd.data.anomaly_datamodule import AnomalyDataModule
    from fgkd.engine import read_metrics
    from fgkd.metrics.anomaly import anomaly_metrics
    from fgkd.pipeline import run
    from fgkd.predict_anomaly import predict_anomaly
    from fgkd.tasks.anomaly import load_anomaly_model

    cfg = compose_train(*TINY_TILES, "model=bsdrd", "model.md_gates=learned", "data.resize_mode=letterbox")
    validate(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(cfg)
    out = Path(cfg.paths.output_dir)
    payload = read_metrics(out / "metrics.json")
    assert payload["task"] == "anomaly" and payload["run"]["model"] == "bsdrd"
    model, info = load_anomaly_model(out / "anomaly.pt")
    assert isinstance(model, BSDRD) and model.mdgf.gates == "learned"
    assert info["data"] == {"layout": "synthtiles", "category": "mtd", "resize_mode": "letterbox"}
    dm = AnomalyDataModule("synthtiles", category="mtd", imgsz=64, num_workers=0, cache_root=cfg.data.cache_root,
                           synthtiles=dict(cfg.data.synthtiles), resize_mode="letterbox")
    test = dm.test_set
    batch = [test[i] for i in range(len(test))]
    maps, _ = model.predict(torch.stack([b["images"] for b in batch]))
    again = anomaly_metrics(maps, torch.stack([b["masks"] for b in batch]).bool(), torch.stack([b["labels"] for b in batch]))
    for column in ("image_auroc", "pixel_auroc", "aupro"):
        assert again[column] == pytest.approx(payload["metrics"][column], abs=1e-5)

    # predict on the original files: letterboxed like training, maps back on each image's own grid
    files = [s.image for s in test.samples[:2]]
    pred = predict_anomaly(out / "anomaly.pt", files, tmp_path / "pred", device="cpu")
    import json

    result = json.loads((pred / "predictions.json").read_text())
    assert result["resize_mode"] == "letterbox" and len(result["images"]) == 2
    assert result["images"][0]["score"] == pytest.approx(float(maps[0].max()), abs=1e-4)
