"""Tests for fgkd.distill.taps (FeatureTaps, probe_channels, select_taps) and fgkd.distill.connectors."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from fgkd.distill.connectors import apply_connectors, build_connectors
from fgkd.distill.losses import build_kd_loss
from fgkd.distill.taps import FeatureTaps, probe_channels, probe_shapes, select_taps


class TinyDetector(nn.Module):
    """Detector-shaped toy: stride-2 convs, ``taps`` name -> module path, ``default_taps`` = last 2 maps."""

    taps = {
        "backbone.p3": "stage3",
        "backbone.p4": "stage4",
        "backbone.p5": "stage5",
        "neck.p5": "neck",
    }
    default_taps = ["backbone.p4", "backbone.p5"]

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.Conv2d(width, width, 3, 2, 1))  # stride 4
        self.stage3 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.SiLU()
        )
        self.stage4 = nn.Conv2d(2 * width, 4 * width, 3, 2, 1)
        self.stage5 = nn.Conv2d(4 * width, 8 * width, 3, 2, 1)
        self.neck = nn.Conv2d(8 * width, 8 * width, 1)
        self.unused = nn.Conv2d(1, 1, 1)  # never called in forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.stage5(self.stage4(self.stage3(self.stem(images)))))


@pytest.fixture
def detector() -> TinyDetector:
    torch.manual_seed(0)
    return TinyDetector()


def test_taps_resolve_detector_names_in_given_order(detector):
    images = torch.rand(2, 3, 64, 64)
    names = ["backbone.p5", "backbone.p3", "neck.p5"]  # deliberately not in forward order
    with FeatureTaps(detector, names) as taps:
        detector(images)
    p5, p3, neck = taps.features
    # strides 32 / 8 / 32 on a 64 px input
    assert p5.shape == (2, 32, 2, 2) and p3.shape == (2, 8, 8, 8) and neck.shape == (2, 32, 2, 2)
    expected_p3 = detector.stage3(detector.stem(images))
    torch.testing.assert_close(p3, expected_p3)
    assert set(taps.by_name) == set(names)


def test_module_paths_accepted_and_explicit_mapping(detector):
    with FeatureTaps(detector, ["stage4", "stem.1"]) as taps:  # not tap names: module paths
        detector(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in taps.features] == [16, 4]
    with FeatureTaps(detector, ["a"], module_paths={"a": "stage5"}) as taps:
        detector(torch.rand(1, 3, 32, 32))
    assert taps.features[0].shape == (1, 32, 1, 1)


def test_unknown_name_lists_valid_ones(detector):
    with pytest.raises(KeyError, match=r"backbone\.p9.*backbone\.p3"):
        FeatureTaps(detector, ["backbone.p9"])
    plain = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with pytest.raises(KeyError, match=r"valid module paths: 0, 1"):
        FeatureTaps(plain, ["5"])
    with pytest.raises(TypeError, match="list of tap names"):
        FeatureTaps(plain, "0")
    with pytest.raises(ValueError, match="unique"):
        FeatureTaps(plain, ["0", "0"])


def test_hooks_removed_on_exit_and_on_exception(detector):
    with FeatureTaps(detector, ["backbone.p4"]):
        assert len(detector.stage4._forward_hooks) == 1
    assert len(detector.stage4._forward_hooks) == 0
    with pytest.raises(ZeroDivisionError):
        with FeatureTaps(detector, ["backbone.p4", "backbone.p5"]):
            detector(torch.rand(1, 3, 32, 32))
            raise ZeroDivisionError
    assert len(detector.stage4._forward_hooks) == 0 and len(detector.stage5._forward_hooks) == 0


def test_tap_that_did_not_fire_raises(detector):
    taps = FeatureTaps(detector, ["backbone.p4", "unused"])
    with taps:
        detector(torch.rand(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match=r"\['unused'\] did not fire"):
        _ = taps.features
    with FeatureTaps(detector, ["backbone.p4"]) as taps:
        pass  # no forward at all
    with pytest.raises(RuntimeError, match="did not fire"):
        _ = taps.features


def test_tap_that_fires_twice_raises(detector):
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="fired twice"):
        with FeatureTaps(detector, ["backbone.p4"]):
            detector(images)
            detector(images)
    shared = nn.Conv2d(2, 2, 1)
    reused = nn.Sequential(shared, nn.SiLU(), shared)  # the same module called twice in one forward
    with pytest.raises(RuntimeError, match="fired twice"):
        with FeatureTaps(reused, ["0"]):
            reused(torch.rand(1, 2, 4, 4))


def test_reentering_clears_previous_records(detector):
    taps = FeatureTaps(detector, ["backbone.p5"])
    with taps:
        detector(torch.rand(1, 3, 32, 32))
    with taps:  # the next step: the same object, a fresh forward
        detector(torch.rand(3, 3, 32, 32))
    assert taps.features[0].shape[0] == 3


def test_inplace_successor_detected_or_cloned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(inplace=True))
    images = torch.randn(2, 2, 4, 4)
    conv_out = model[0](images).detach()
    assert (conv_out < 0).any()  # otherwise the ReLU would not change anything

    taps = FeatureTaps(model, ["0"])
    with taps:
        model(images)
    with pytest.raises(RuntimeError, match=r"modified in place.*clone=True"):
        _ = taps.features

    taps = FeatureTaps(model, ["0"], clone=True)
    with taps:
        out = model(images)
    (feature,) = taps.features
    torch.testing.assert_close(feature, conv_out)  # the pre-ReLU values survive
    torch.testing.assert_close(out, conv_out.clamp_min(0))  # and the forward is unchanged
    # the clone stays on the graph: d(sum feature)/d(bias) = number of positions per channel = 2*4*4
    feature.sum().backward()
    torch.testing.assert_close(model[0].bias.grad, torch.full((3,), 32.0))


def test_teacher_under_no_grad_and_inference_mode(detector):
    images = torch.rand(1, 3, 32, 32)
    for context in (torch.no_grad, torch.inference_mode):
        with context(), FeatureTaps(detector, ["backbone.p5"]) as taps:
            detector(images)
        assert not taps.features[0].requires_grad


def test_autocast_features_are_low_precision_and_loss_is_fp32(detector):
    images = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), FeatureTaps(detector, detector.default_taps) as taps:
        detector(images)
    feats = taps.features
    assert all(f.dtype == torch.bfloat16 for f in feats)
    loss = build_kd_loss("cs")(feats, [f.detach() * 2 for f in feats])
    assert loss.dtype == torch.float32


def test_data_parallel_refused(detector):
    with pytest.raises(TypeError, match="DataParallel"):
        FeatureTaps(nn.DataParallel(detector), ["backbone.p4"])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_ddp_wrapped_model_is_unwrapped(detector, tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(detector)
        with FeatureTaps(wrapped, ["backbone.p4"]) as taps:  # the DDP module has no "taps" itself
            wrapped(torch.rand(2, 3, 32, 32))
        assert taps.features[0].shape == (2, 16, 2, 2)
        assert len(detector.stage4._forward_hooks) == 0
    finally:
        dist.destroy_process_group()


def test_probe_channels_restores_mode_and_bn_stats(detector):
    detector.train()
    detector.stage4.eval()  # a mixed state must come back exactly
    bn = detector.stage3[1]
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    assert probe_channels(detector, ["backbone.p3", "backbone.p4", "backbone.p5"]) == [8, 16, 32]
    assert probe_shapes(detector, ["backbone.p3"], imgsz=96)[0] == (1, 8, 12, 12)
    torch.testing.assert_close(bn.running_mean, before[0])
    assert int(bn.num_batches_tracked) == before[1]
    assert detector.training and detector.stem.training and not detector.stage4.training


def test_select_taps(detector):
    assert select_taps(detector) == ["backbone.p4", "backbone.p5"]
    assert select_taps(detector, layers=3) == ["backbone.p3", "backbone.p4", "backbone.p5"]
    assert select_taps(detector, layers=1) == ["backbone.p5"]
    assert select_taps(detector, taps=["neck.p5", "stage3"]) == ["neck.p5", "stage3"]
    assert select_taps(detector, taps=["backbone.p3", "backbone.p5"], layers=1) == ["backbone.p5"]
    with pytest.raises(ValueError, match=r"kd\.layers must be an integer in \[1, 3\]"):
        select_taps(detector, layers=4)
    with pytest.raises(KeyError, match="valid taps"):
        select_taps(detector, taps=["backbone.p7"])


def test_connectors_map_student_to_teacher_channels():
    connectors = build_connectors([4, 8, 16], [4, 32, 16])
    assert isinstance(connectors[0], nn.Identity) and isinstance(connectors[2], nn.Identity)
    assert isinstance(connectors[1], nn.Conv2d) and connectors[1].kernel_size == (1, 1)
    assert (connectors[1].in_channels, connectors[1].out_channels) == (8, 32)
    student = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    mapped = apply_connectors(connectors, student)
    assert [tuple(f.shape) for f in mapped] == [(2, 4, 8, 8), (2, 32, 4, 4), (2, 16, 2, 2)]
    assert mapped[0] is student[0]
    # the adapted pair now passes the loss's channel check, and the adapter receives gradient
    teacher = [torch.rand(2, 4, 8, 8), torch.rand(2, 32, 4, 4), torch.rand(2, 16, 2, 2)]
    build_kd_loss("mse")(mapped, teacher).backward()
    assert connectors[1].weight.grad is not None
    assert sum(p.numel() for p in build_connectors([8, 16], [8, 16]).parameters()) == 0
    with pytest.raises(ValueError, match="2 student taps vs 1 teacher taps"):
        build_connectors([4, 8], [4])


def _yolov8_available() -> bool:
    try:
        from fgkd.models import list_detectors

        return "yolov8n" in list_detectors()
    except Exception:  # the family is written by another helper; skip until it imports
        return False


@pytest.mark.skipif(not _yolov8_available(), reason="yolov8n not registered yet")
def test_early_exit_gives_the_same_features_and_skips_the_rest(detector):
    """stop_when_complete: the forward ends after the last tap (the neck never runs), the maps are those of a
    full forward, and the hooks are gone afterwards."""
    detector.eval()
    calls = []
    detector.neck.register_forward_hook(lambda *args: calls.append("neck"))
    names = ["backbone.p3", "backbone.p5"]
    with torch.no_grad(), FeatureTaps(detector, names) as full:
        detector(torch.ones(1, 3, 64, 64))
    out = "not run"
    with torch.no_grad(), FeatureTaps(detector, names, stop_when_complete=True) as early:
        out = detector(torch.ones(1, 3, 64, 64))
    assert out == "not run" and calls == ["neck"]
    for a, b in zip(full.features, early.features, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not detector.stage3._forward_hooks and not detector.stage5._forward_hooks
    with pytest.raises(ValueError, match="boom"), FeatureTaps(detector, names, stop_when_complete=True):
        raise ValueError("boom")  # other exceptions still propagate


def test_frozen_teacher_without_output_skips_neck_and_head_of_yolov8n():
    from fgkd.distill.frozen import FrozenTeacher
    from fgkd.models import build_detector

    torch.manual_seed(0)
    teacher = FrozenTeacher(build_detector("yolov8n", num_classes=3))
    ran = []
    teacher.model.head.register_forward_hook(lambda *args: ran.append("head"))
    images = torch.rand(2, 3, 64, 64)
    raw, full = teacher.forward(images, teacher.model.default_taps)
    assert raw is not None and ran == ["head"]
    raw, early = teacher.forward(images, teacher.model.default_taps, need_output=False)
    assert raw is None and ran == ["head"]
    for a, b in zip(full, early, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_feature_taps_on_yolov8n_default_taps_have_their_strides():
    from fgkd.models import build_detector

    torch.manual_seed(0)
    model = build_detector("yolov8n", num_classes=3)
    names = model.default_taps
    assert names and all(name in model.taps for name in names)
    model.eval()
    with torch.no_grad(), FeatureTaps(model, names) as taps:
        model(torch.rand(1, 3, 64, 64))
    for name, feature in zip(names, taps.features, strict=True):
        level = int(name.rsplit(".p", 1)[1])  # backbone.pK has stride 2**K
        assert feature.shape[-2:] == (64 >> level, 64 >> level), (name, tuple(feature.shape))
    assert probe_channels(model, names) == [f.shape[1] for f in taps.features]


@pytest.mark.parametrize("name", ["yolov6n", "yolov6s", "yolov6m", "yolov6l", "yolov8n", "yolov8s", "yolov8m", "yolov8l",
                                  "yolov5nu", "yolov5lu"])
def test_declared_tap_channels_and_strides_match_a_forward(name):
    """TapInfo (like timm's feature_info) is what connectors are built from: it must equal the real maps."""
    from fgkd.models import build_detector
    from fgkd.models.detectors.base import TapInfo

    model = build_detector(name, num_classes=3)
    names = list(model.taps)
    assert all(isinstance(model.taps[n], TapInfo) for n in names)
    shapes = probe_shapes(model, names, imgsz=64)
    for tap, shape in zip(names, shapes, strict=True):
        info = model.taps[tap]
        assert (info.channels, info.stride) == (shape[1], 64 // shape[-1]), (name, tap, tuple(shape))
