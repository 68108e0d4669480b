"""YOLOv8 n/s/m/l: parity with the reference architecture (parameter counts, tap shapes), the Detector
contract (raw output, taps, loss, postprocess), fusion, weight loading and the Hydra model configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fgkd.models import build_detector, list_detectors
from fgkd.models.detectors.common import BN_EPS, BN_MOMENTUM, ConvBNAct
from fgkd.models.detectors.yolov8 import C2f, YOLOv8, scaled_depth, scaled_width
from fgkd.models.weights import load_weights

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Trainable parameter counts of the reference models at nc=80 (yolov8.yaml comments: 3.16M/11.17M/25.9M/43.7M;
# exact reference totals minus the 16 frozen DFL weights, which are a buffer here).
REFERENCE_PARAMS = {"yolov8n": 3_157_184, "yolov8s": 11_166_544, "yolov8m": 25_902_624, "yolov8l": 43_691_504}
# Backbone P3/P4/P5 channels (detectors.md §3.1 table); spatial 80/40/20 at 640.
REFERENCE_BACKBONE_CHANNELS = {
    "yolov8n": (64, 128, 256),
    "yolov8s": (128, 256, 512),
    "yolov8m": (192, 384, 576),
    "yolov8l": (256, 512, 512),
}


@pytest.fixture(scope="module")
def nano() -> YOLOv8:
    torch.manual_seed(0)
    return build_detector("yolov8n", num_classes=3).eval()


def _num_anchors(h: int, w: int) -> int:
    return sum((h // s) * (w // s) for s in (8, 16, 32))


def _capture_taps(model: YOLOv8, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    handles = [
        model.tap_module(name).register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return captured


# ---------------------------------------------------------------- reference parity (meta device: no compute)


def test_scaling_rules_golden():
    assert [scaled_depth(n, 0.33) for n in (1, 3, 6)] == [1, 1, 2]
    assert [scaled_depth(n, 0.67) for n in (3, 6)] == [2, 4]
    assert scaled_width(1024, 0.75, 768) == 576  # max_channels clamps before the width multiplier
    assert scaled_width(1024, 1.0, 512) == 512
    assert scaled_width(64, 0.25, 1024) == 16
    assert scaled_width(100, 0.25, 1024) == 32  # 25 rounds *up* to a multiple of 8


def test_registry_lists_all_sizes():
    assert {"yolov8n", "yolov8s", "yolov8m", "yolov8l"} <= set(list_detectors())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_and_backbone_shapes_match_reference(name):
    with torch.device("meta"):
        model = build_detector(name, num_classes=80)
        images = torch.empty(1, 3, 640, 640)
        feats = _capture_taps(model, list(model.taps), images)
        raw = model(images)
    assert model.num_trainable_parameters() == REFERENCE_PARAMS[name]
    assert all(p.requires_grad for p in model.parameters())
    c3, c4, c5 = REFERENCE_BACKBONE_CHANNELS[name]
    assert tuple(feats["backbone.p3"].shape) == (1, c3, 80, 80)
    assert tuple(feats["backbone.p4"].shape) == (1, c4, 40, 40)
    assert tuple(feats["backbone.p5"].shape) == (1, c5, 20, 20)
    assert tuple(feats["backbone.p2"].shape) == (1, c3 // 2, 160, 160)
    # the neck keeps the backbone's channel counts at each level
    assert [tuple(feats[f"neck.p{i}"].shape[1:]) for i in (3, 4, 5)] == [(c3, 80, 80), (c4, 40, 40), (c5, 20, 20)]
    assert raw["cls"].shape == (1, 8400, 80) and raw["box"].shape == (1, 8400, 64)


def test_head_widths_follow_reference_rule():
    # box branch max(16, ch0 // 4, 64), class branch max(ch0, min(nc, 100)); ch0 = P3 neck channels
    with torch.device("meta"):
        n80, n3, l200 = YOLOv8(80, "n"), YOLOv8(3, "n"), YOLOv8(200, "l")
    assert n80.head.box_branches[0][0].conv.out_channels == 64
    assert n80.head.cls_branches[0][0].conv.out_channels == 80
    assert n3.head.cls_branches[0][0].conv.out_channels == 64
    assert l200.head.box_branches[0][0].conv.out_channels == 64
    assert l200.head.cls_branches[0][0].conv.out_channels == 256
    assert [branch[-1].out_channels for branch in n3.head.box_branches] == [64, 64, 64]
    assert [branch[-1].out_channels for branch in n3.head.cls_branches] == [3, 3, 3]


def test_shortcuts_only_in_backbone_c2f():
    with torch.device("meta"):
        model = YOLOv8(3, "s")
    backbone_c2f = [m for m in model.backbone.modules() if isinstance(m, C2f)]
    neck_c2f = [m for m in model.neck.modules() if isinstance(m, C2f)]
    assert len(backbone_c2f) == 4 and len(neck_c2f) == 4
    assert all(b.residual for m in backbone_c2f for b in m.blocks)
    assert not any(b.residual for m in neck_c2f for b in m.blocks)
    # depth scaling for s (0.33): backbone 1, 2, 2, 1 bottlenecks; neck 1 each
    assert [len(m.blocks) for m in backbone_c2f] == [1, 2, 2, 1]
    assert [len(m.blocks) for m in neck_c2f] == [1, 1, 1, 1]


def test_batchnorm_settings_and_bias_init(nano):
    bns = [m for m in nano.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == BN_EPS == 1e-3 and bn.momentum == BN_MOMENTUM == 0.03 for bn in bns)
    # DFL logits start at -0.5 * bin (fgkd.models.detectors.yolov8.YOLOv8Head.reset_biases), side-major,
    # so every side's initial expected distance is sum k e^{-k/2} / sum e^{-k/2} over k < 16 (~1.54 strides).
    bins = torch.arange(16, dtype=torch.float32)
    for branch in nano.head.box_branches:
        torch.testing.assert_close(branch[-1].bias, (-0.5 * bins).repeat(4))
    weights = torch.exp(-0.5 * bins)
    expected_side = float((bins * weights).sum() / weights.sum())
    assert 1.5 < expected_side < 1.6
    for branch, stride in zip(nano.head.cls_branches, (8, 16, 32), strict=False):
        expected = math.log(5 / 3 / (640 / stride) ** 2)  # nc = 3
        torch.testing.assert_close(branch[-1].bias, torch.full((3,), expected))


# ---------------------------------------------------------------- the Detector contract on real tensors


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (128, 128), (64, 96)])
def test_forward_raw_output(nano, size):
    h, w = size
    with torch.no_grad():
        raw = nano(torch.rand(2, 3, h, w))
    a = _num_anchors(h, w)
    assert raw["cls"].shape == (2, a, 3)
    assert raw["box"].shape == (2, a, 64)
    assert raw["anchors"].shape == (a, 2) and raw["strides"].shape == (a, 1)
    assert raw["bins"] == 16
    n8 = (h // 8) * (w // 8)
    n16 = (h // 16) * (w // 16)
    # anchors: (index + 0.5) * stride in px, x fastest, stride-8 level first
    torch.testing.assert_close(raw["anchors"][:2], torch.tensor([[4.0, 4.0], [12.0, 4.0]]))
    torch.testing.assert_close(raw["anchors"][w // 8], torch.tensor([4.0, 12.0]))
    torch.testing.assert_close(raw["anchors"][n8], torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(raw["anchors"][-1], torch.tensor([w - 16.0, h - 16.0]))
    assert torch.equal(raw["strides"][:n8], torch.full((n8, 1), 8.0))
    assert torch.equal(raw["strides"][n8 : n8 + n16], torch.full((n16, 1), 16.0))
    assert torch.equal(raw["strides"][n8 + n16 :], torch.full((a - n8 - n16, 1), 32.0))


def test_raw_output_is_the_flattened_per_level_head_maps(nano):
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        levels = nano.forward_levels(images)
        raw = nano(images)
    assert [tuple(level.shape) for level in levels] == [(1, 67, 8, 12), (1, 67, 4, 6), (1, 67, 2, 3)]
    # the P4 cell at row 1, col 2 sits right after the 96 P3 cells, at index 96 + 1*6 + 2
    torch.testing.assert_close(raw["box"][0, 96 + 8], levels[1][0, :64, 1, 2])
    torch.testing.assert_close(raw["cls"][0, 96 + 8], levels[1][0, 64:, 1, 2])


def test_autocast_keeps_anchor_geometry_fp32(nano):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw = nano(torch.rand(1, 3, 64, 64))
    assert raw["cls"].dtype == torch.bfloat16
    assert raw["anchors"].dtype == raw["strides"].dtype == torch.float32
    torch.testing.assert_close(raw["anchors"][-1], torch.tensor([48.0, 48.0]))


def test_taps_resolve_to_modules_with_map_outputs(nano):
    assert nano.default_taps == ["backbone.p3", "backbone.p4", "backbone.p5"]
    assert set(nano.taps) == {f"backbone.p{i}" for i in (2, 3, 4, 5)} | {f"neck.p{i}" for i in (3, 4, 5)}
    feats = _capture_taps(nano, list(nano.taps), torch.rand(2, 3, 128, 96))
    channels = {2: 32, 3: 64, 4: 128, 5: 256}
    for name, feat in feats.items():
        level = int(name[-1])
        assert isinstance(feat, torch.Tensor), name
        assert tuple(feat.shape) == (2, channels[level], 128 >> level, 96 >> level), name
    with pytest.raises(KeyError, match="valid taps"):
        nano.tap_module("backbone.p9")


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_detector("yolov8n", num_classes=2).train()
    raw = model(torch.rand(2, 3, 64, 64))
    (raw["cls"].square().mean() + raw["box"].square().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_inputs_and_overrides_raise_clear_errors(nano):
    with pytest.raises(ValueError, match="multiples of 32"):
        nano(torch.rand(1, 3, 70, 64))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        nano(torch.rand(3, 64, 64))
    with pytest.raises(TypeError, match="unknown option"):
        build_detector("yolov8n", num_classes=3, widht=0.5)
    with pytest.raises(ValueError, match="scale"):
        YOLOv8(3, "x")


def test_fuse_keeps_eval_outputs():
    torch.manual_seed(0)
    model = build_detector("yolov8n", num_classes=3)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    model.eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        before = model(images)
        assert model.fuse() is model
        after = model(images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.conv.bias is not None for m in model.modules() if isinstance(m, ConvBNAct))
    for key in ("cls", "box"):
        torch.testing.assert_close(after[key], before[key], atol=1e-4, rtol=1e-4)
    assert model.fuse() is model  # idempotent


# ---------------------------------------------------------------- weights


def _weights_differ(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=False))


def test_weights_round_trip_formats(tmp_path):
    torch.manual_seed(1)
    source = build_detector("yolov8n", num_classes=3)
    teacher = build_detector("yolov8n", num_classes=3)
    sd = source.state_dict()
    files = {
        "raw.pt": sd,
        "wrapped.pt": {"model": sd, "epoch": 3},
        # a Lightning KD checkpoint: student and teacher of the same architecture; the student wins
        "lightning.ckpt": {
            "state_dict": {**{f"student.{k}": v for k, v in sd.items()},
                           **{f"teacher.{k}": v for k, v in teacher.state_dict().items()}},
            "epoch": 1,
        },
        "module_prefix.ckpt": {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
    }
    for file_name, payload in files.items():
        torch.save(payload, tmp_path / file_name)
        torch.manual_seed(2)
        target = build_detector("yolov8n", num_classes=3)
        assert _weights_differ(target, source)
        report = load_weights(target, tmp_path / file_name)
        assert not _weights_differ(target, source), file_name
        assert not report.missing and not report.unexpected and not report.mismatched
    # an explicit prefix selects the teacher instead
    target = build_detector("yolov8n", num_classes=3)
    assert load_weights(target, tmp_path / "lightning.ckpt", prefix="teacher.").prefix == "teacher."
    assert not _weights_differ(target, teacher)
    # build_detector(weights=...) goes through the same loader
    built = build_detector("yolov8n", num_classes=3, weights=str(tmp_path / "raw.pt"))
    assert not _weights_differ(built, source)


def test_weights_lightning_checkpoint_with_pickled_hparams(tmp_path):
    from omegaconf import OmegaConf

    source = build_detector("yolov8n", num_classes=1)
    ckpt = {"state_dict": {f"student.{k}": v for k, v in source.state_dict().items()},
            "hyper_parameters": {"cfg": OmegaConf.create({"model": {"name": "yolov8n"}})}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    target = build_detector("yolov8n", num_classes=1)
    load_weights(target, tmp_path / "last.ckpt")
    assert not _weights_differ(target, source)


def test_weights_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nope" / "yolov8n.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_weights(build_detector("yolov8n", num_classes=3), missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        build_detector("yolov8n", num_classes=3, weights=str(missing))

    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_weights(build_detector("yolov8n", num_classes=3), tmp_path / "garbage.pt")

    # nc=80 checkpoint into an nc=3 model: for n the class branch width is max(64, min(nc, 100)) = 80 vs 64,
    # so per level 2 convs + 2 BNs (4 tensors each, num_batches_tracked is a scalar) + final weight/bias
    coco = build_detector("yolov8n", num_classes=80)
    torch.save(coco.state_dict(), tmp_path / "coco.pt")
    target = build_detector("yolov8n", num_classes=3)
    own_cls_bias = target.head.cls_branches[0][-1].bias.clone()
    with pytest.raises(ValueError, match=r"36 tensor shape mismatch") as err:
        load_weights(target, tmp_path / "coco.pt", strict=False)
    message = str(err.value)
    assert "coco.pt" in message and "skip_mismatched" in message
    assert "head.cls_branches.0.0.conv.weight: checkpoint (80, 64, 3, 3) vs model (64, 64, 3, 3)" in message
    report = load_weights(target, tmp_path / "coco.pt", skip_mismatched=True)
    assert len(report.mismatched) == 3 * (2 * 5 + 2)
    assert all(m.startswith("head.cls_branches.") for m in report.mismatched)
    assert torch.equal(target.head.cls_branches[0][-1].bias, own_cls_bias)
    torch.testing.assert_close(target.backbone.stem.conv.weight, coco.backbone.stem.conv.weight)

    # strict: missing / unexpected keys are listed; strict=False loads the matching part
    partial = {k: v for k, v in coco.state_dict().items() if k.startswith("backbone.")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "backbone_only.pt")
    target = build_detector("yolov8n", num_classes=80)
    with pytest.raises(RuntimeError, match=r"missing in checkpoint .*neck\.") as err:
        load_weights(target, tmp_path / "backbone_only.pt")
    assert "unexpected in checkpoint (1): extra.weight" in str(err.value)
    report = load_weights(target, tmp_path / "backbone_only.pt", strict=False)
    assert report.unexpected == ["extra.weight"] and all(not k.startswith("backbone.") for k in report.missing)
    torch.testing.assert_close(target.backbone.stage5[2].project.conv.weight, coco.backbone.stage5[2].project.conv.weight)


# ---------------------------------------------------------------- Hydra configs


@pytest.mark.parametrize("name", ["yolov8n", "yolov8s", "yolov8m", "yolov8l"])
def test_hydra_model_config(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name=None, overrides=[f"+model={name}"])
    model_cfg = cfg.model
    assert model_cfg.name == name and model_cfg.family == "yolov8" and model_cfg.weights is None
    recipe = model_cfg.recipe
    assert recipe.optimizer.name == "adamw" and recipe.optimizer.lr == "auto"
    assert (recipe.optimizer.momentum, recipe.optimizer.weight_decay, recipe.optimizer.nbs) == (0.9, 5e-4, 64)
    assert recipe.scheduler.lrf == 0.01 and recipe.scheduler.warmup_epochs == 3
    assert recipe.scheduler.warmup_bias_lr == 0.0 and recipe.close_mosaic == 10
    assert dict(recipe.loss) == {"box_gain": 7.5, "cls_gain": 0.5, "dfl_gain": 1.5, "topk": 10, "alpha": 0.5, "beta": 6.0,
                                 "min_candidate_size": 16}
    # the loss block is a valid set of build_detector overrides
    with torch.device("meta"):
        model = build_detector(model_cfg.name, num_classes=3, **recipe.loss)
    assert model.loss_kwargs == dict(recipe.loss)


# ---------------------------------------------------------------- loss / postprocess (losses.py, ops.py)


def test_loss_runs_and_backpropagates():
    torch.manual_seed(0)
    model = build_detector("yolov8n", num_classes=3).train()
    raw = model(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([[0, 1, 8.0, 10.0, 40.0, 50.0], [1, 0, 20.0, 4.0, 60.0, 30.0], [1, 2, 2.0, 2.0, 20.0, 24.0]])
    total, parts = model.loss(raw, targets, epoch=0)
    assert total.ndim == 0 and torch.isfinite(total) and total > 0
    assert {"box", "cls", "dfl"} <= set(parts)
    assert all(not v.requires_grad for v in parts.values())
    total.backward()
    assert model.head.box_branches[0][-1].weight.grad is not None
    # no targets: still a finite, differentiable (class-only) loss
    total_empty, _ = model.loss(model(torch.rand(2, 3, 64, 64)), torch.zeros(0, 6))
    assert torch.isfinite(total_empty)


def test_postprocess_returns_boxes_inside_the_image(nano):
    with torch.no_grad():
        raw = nano(torch.rand(2, 3, 64, 96))
        detections = nano.postprocess(raw, conf=0.0, iou=0.7, max_det=7)
    assert len(detections) == 2
    for det in detections:
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert 0 < n <= 7
        assert (det["labels"] >= 0).all() and (det["labels"] < 3).all()
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all()
