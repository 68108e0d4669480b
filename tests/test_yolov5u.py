"""YOLOv5u n/s/m/l (YOLOv5 trunk + YOLOv8 head): parameter parity with Ultralytics, taps, a training step through
the real entry point (the conversion of Ultralytics ``yolov5*u.pt`` files: tests/test_convert.py)."""

from __future__ import annotations

import pytest
import torch

from fgkd.models.detectors.base import build_detector

# Ultralytics 8.2.0 DetectionModel("yolov5{n,s,m,l}u.yaml", nc=80): sum of parameters 2_654_816 / 9_153_152 /
# 25_111_456 / 53_225_024 (measured here), of which 16 are the fixed DFL projection (requires_grad False)
REFERENCE_TRAINABLE = {"n": 2_654_800, "s": 9_153_136, "m": 25_111_440, "l": 53_225_008}
TAP_CHANNELS = {"n": (64, 128, 256), "s": (128, 256, 512), "m": (192, 384, 768), "l": (256, 512, 1024)}


@pytest.mark.parametrize("scale", list(REFERENCE_TRAINABLE))
def test_parameter_counts_equal_ultralytics_and_the_trunk_is_yolov5s(scale):
    model = build_detector(f"yolov5{scale}u", 80)
    assert model.family == "yolov5u" and model.num_trainable_parameters() == REFERENCE_TRAINABLE[scale]
    yolov5 = build_detector(f"yolov5{scale}", 80)  # v7.0: the same backbone (layers 0-9) and neck
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(p.numel() for p in yolov5.backbone.parameters())
    assert [model.taps[f"backbone.p{i}"].channels for i in (3, 4, 5)] == list(TAP_CHANNELS[scale])
    assert [model.taps[f"neck.p{i}"].channels for i in (3, 4, 5)] == list(TAP_CHANNELS[scale])


def test_taps_and_head_outputs_follow_the_strides():
    model = build_detector("yolov5nu", 3).eval()
    captured = {}
    handles = [model.get_submodule(info.module).register_forward_hook(
        lambda m, a, out, name=name: captured.setdefault(name, out)) for name, info in model.taps.items()]
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 64, 96))
    for handle in handles:
        handle.remove()
    for name, info in model.taps.items():
        assert captured[name].shape[1:] == (info.channels, 64 // info.stride, 96 // info.stride), name
    assert raw["cls"].shape == (1, 2 * 3 + 4 * 6 + 8 * 12, 3)  # anchor-free: one prediction per cell
    assert len(model.postprocess(raw)) == 1


def test_yolov5nu_kd_step_learns_through_train_entry(compose_train, tmp_path):
    from fgkd.pipeline import run

    cfg = compose_train("model=yolov5nu", "kd=cs", "imgsz=64", "epochs=1", "batch_size=2", "num_workers=0",
                        "data.synthpipes.num_images=8", "data.synthpipes.max_side=96", "trainer.limit_train_batches=2",
                        "logger=none", output_dir=tmp_path / "run")
    result = run(cfg)
    assert {"map", "map_50", "mar_100"} <= set(result.metrics)
