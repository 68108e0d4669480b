"""Checkpoint conversion (fgkd.models.convert) and loading converted weights (class heads re-initialised).

The parity tests need the source package (``ultralytics``) and are skipped without it: they build the source
model with random weights, save it the way the project saves its releases, convert it and compare the outputs."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from helpers.statistics import randomise_batchnorm

from fgkd.models.convert import ConversionError, map_by_order, map_by_rules, read_checkpoint
from fgkd.models.convert.__main__ import main as convert_main
from fgkd.models.detectors.base import build_detector


# -- without any source package ---------------------------------------------------------------------------------
def test_order_and_rule_mappings_name_the_first_mismatch():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    assert list(map_by_order({"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, target)) == ["a.weight", "a.bias"]
    with pytest.raises(ConversionError, match=r"x.weight \(3, 3\) does not fit a.weight \(2, 3\)"):
        map_by_order({"x.weight": torch.ones(3, 3), "x.bias": torch.ones(2)}, target)
    with pytest.raises(ConversionError, match="1 tensors, the fgkd model 2"):
        map_by_order({"x.weight": torch.ones(2, 3)}, target)
    rules = [(r"x\.(.+)", r"a.\1")]
    assert set(map_by_rules({"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, target, rules)) == set(target)
    with pytest.raises(ConversionError, match=r"unmapped source keys \(1\): y.bias.*fgkd keys without a source \(1\): a.bias"):
        map_by_rules({"x.weight": torch.ones(2, 3), "y.bias": torch.ones(2)}, target, rules)


def test_a_checkpoint_of_a_missing_package_gets_the_install_hint(tmp_path, monkeypatch):
    package = tmp_path / "fgkd_stand_in_source"  # a name no real package has (ultralytics may be installed)
    package.mkdir()
    (package / "__init__.py").write_text("class DetectionModel:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fgkd_stand_in_source as fake  # the stand-in package, importable only now

    path = tmp_path / "yolov8n.pt"
    torch.save({"model": fake.DetectionModel()}, path)
    monkeypatch.delitem(sys.modules, "fgkd_stand_in_source")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(ConversionError, match=r"pickles classes of the 'fgkd_stand_in_source' package.*Fix: install"):
        read_checkpoint(path)

    def pickled_by_ultralytics(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'ultralytics'", name="ultralytics.nn.tasks")

    monkeypatch.setattr(torch, "load", pickled_by_ultralytics)
    with pytest.raises(ConversionError, match=r"'ultralytics' package.*Fix: pip install ultralytics"):
        read_checkpoint(path)


def test_cli_errors_exit_2_with_the_reason(tmp_path, capsys):
    assert convert_main([str(tmp_path / "missing.pt"), str(tmp_path / "out.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    assert convert_main([str(tmp_path / "plain.pt"), str(tmp_path / "out.pt")]) == 2
    assert "not a checkpoint this converter reads" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("name", ["yolov8n", "yolov6n", "yolov5n", "rtdetr_r18"])
def test_weights_of_another_class_count_reinitialise_the_class_heads_only(tmp_path, name, capsys):
    torch.manual_seed(0)
    coco = build_detector(name, 80)
    torch.save(coco.state_dict(), tmp_path / "coco.pt")
    model = build_detector(name, 3, weights=str(tmp_path / "coco.pt"))
    message = capsys.readouterr().out
    assert "re-initialised the" in message and "class-head tensor(s)" in message
    fresh = build_detector(name, 3).state_dict()
    for key, value in model.state_dict().items():
        if coco.state_dict()[key].shape == value.shape:
            assert torch.equal(value, coco.state_dict()[key]), key  # everything that fits is loaded
        else:
            assert key in message and value.shape == fresh[key].shape, key  # listed, and at the model's shape


def test_weights_of_another_architecture_are_refused_with_the_keys_named(tmp_path):
    torch.save(build_detector("yolov8n", 3).state_dict(), tmp_path / "n.pt")
    with pytest.raises(ValueError, match=r"(?s)shape mismatch.*backbone\.stem\.conv\.weight"):
        build_detector("yolov8s", 3, weights=str(tmp_path / "n.pt"))
    with pytest.raises(RuntimeError, match=r"(?s)does not match RTDETR.*missing in checkpoint"):
        build_detector("rtdetr_r18", 3, weights=str(tmp_path / "n.pt"))


# -- Ultralytics (skipped when the package is not installed) ---------------------------------------------------------
def _ultralytics():
    os.environ.setdefault("YOLO_OFFLINE", "True")  # importing it otherwise probes the network
    return pytest.importorskip("ultralytics")


@pytest.mark.parametrize("variant", ["yolov8n", "yolov8s", "yolov5nu", "yolov5su"])
def test_ultralytics_yolov8_and_yolov5u_convert_to_equal_outputs(tmp_path, variant):
    _ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    from fgkd.models.convert import convert
    from fgkd.tasks.detect import load_detector

    torch.manual_seed(0)
    source = DetectionModel(f"{variant}.yaml", nc=80, verbose=False)
    randomise_batchnorm(source)
    torch.save({"model": source, "ema": None, "train_args": {}}, tmp_path / f"{variant}.pt")  # the release layout
    out = convert(tmp_path / f"{variant}.pt", tmp_path / "fgkd.pt")
    detector, info = load_detector(out)
    assert info["detector"]["name"] == variant and len(info["class_names"]) == 80 and info["imgsz"] == 640
    images = torch.rand(2, 3, 128, 160)
    source.eval()
    detector.eval()
    with torch.no_grad():
        reference = source(images)[0]  # [B, 4 + nc, A]: xywh in pixels, then class probabilities
        boxes, scores = detector.decode(detector(images))
    xywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)
    torch.testing.assert_close(xywh, reference[:, :4].transpose(1, 2), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores, reference[:, 4:].transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_ultralytics_rtdetr_l_converts_to_equal_outputs(tmp_path):
    _ultralytics()
    from ultralytics.nn.tasks import RTDETRDetectionModel

    from fgkd.models.convert import convert
    from fgkd.tasks.detect import load_detector

    torch.manual_seed(0)
    source = RTDETRDetectionModel("rtdetr-l.yaml", nc=80, verbose=False)
    randomise_batchnorm(source)
    with torch.no_grad():
        source.model[-1].enc_score_head.weight.mul_(50)  # separated encoder scores: a stable top-k selection
    torch.save({"model": source, "ema": None}, tmp_path / "rtdetr-l.pt")
    out = convert(tmp_path / "rtdetr-l.pt", tmp_path / "fgkd.pt")
    detector, info = load_detector(out)
    assert info["detector"]["name"] == "rtdetr_l" and detector.num_trainable_parameters() == 32_970_476
    images = torch.rand(1, 3, 320, 320)
    source.eval()
    detector.eval()
    captured = {}
    hook = source.model[-1].register_forward_pre_hook(lambda module, args: captured.setdefault("encoder", args[0]))
    with torch.no_grad():
        reference = source(images)
        reference = reference[0] if isinstance(reference, (tuple, list)) else reference  # [B, 300, 4 + nc]
        raw = detector(images)
        head = detector.decoder(list(captured["encoder"]))  # the decoder head on the source's encoder maps
    hook.remove()
    ours = torch.cat([raw["boxes"][-1], raw["logits"][-1].sigmoid()], -1)
    assert ours.shape == reference.shape
    # the head alone, on identical inputs: the same 300 queries in the same order
    torch.testing.assert_close(torch.cat([head["boxes"][-1], head["logits"][-1].sigmoid()], -1), reference,
                               atol=1e-4, rtol=1e-4)
    # the whole model: backbone and encoder agree to ~1e-7, which may swap the 300th and 301st encoder scores
    # when they are that close (they are: random weights), so all but a couple of queries must be found
    nearest = torch.cdist(ours[0], reference[0], compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert (nearest < 1e-4).sum() >= 298, nearest.topk(3).values


# -- YOLOv5 v7.0 (skipped without the yolov5 package: pip install yolov5) --------------------------------------------
@pytest.mark.parametrize("variant", ["yolov5n", "yolov5s"])
def test_yolov5_v7_converts_to_equal_outputs(tmp_path, variant):
    os.environ.setdefault("YOLO_OFFLINE", "True")
    yolov5 = pytest.importorskip("yolov5")
    from yolov5.models.yolo import DetectionModel

    from fgkd.models.convert import convert
    from fgkd.tasks.detect import load_detector

    torch.manual_seed(0)
    source = DetectionModel(os.path.join(os.path.dirname(yolov5.__file__), "models", f"{variant}.yaml"), nc=80)
    randomise_batchnorm(source)
    with torch.no_grad():
        source.model[-1].anchors.mul_(1.1)  # as re-fitted by AutoAnchor: the converter must carry them over
    source = source.half().float()  # the release stores half precision; compare against what is stored
    torch.save({"model": source.half(), "ema": None, "epoch": -1}, tmp_path / f"{variant}.pt")
    source.float()
    out = convert(tmp_path / f"{variant}.pt", tmp_path / "fgkd.pt")
    detector, info = load_detector(out)
    assert info["detector"]["name"] == variant and len(info["class_names"]) == 80
    images = torch.rand(2, 3, 128, 160)
    source.eval()
    detector.eval()
    with torch.no_grad():
        reference = source(images)[0]  # [B, A, 5 + nc]: xywh px, σ(obj), σ(cls)
        boxes, scores = detector.decode(detector(images))
    xywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)
    torch.testing.assert_close(xywh, reference[..., :4], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores, reference[..., 4:5] * reference[..., 5:], atol=1e-5, rtol=1e-5)


# -- YOLOv6 0.4.0 (skipped without the yolov6 package: a meituan/YOLOv6 clone on PYTHONPATH, or pip install yolov6detect)
@pytest.mark.parametrize(("variant", "head"), [("yolov6n", {}), ("yolov6s", {"fuse_ab": True}),
                                               ("yolov6s", {"distill_ns": True}), ("yolov6m", {"fuse_ab": True})],
                         ids=["n-plain", "s-fuse_ab", "s-distill_ns", "m-fuse_ab"])
def test_yolov6_release_converts_to_equal_outputs(tmp_path, variant, head):
    pytest.importorskip("yolov6.models.yolo")
    import yolov6
    from yolov6.models.yolo import build_model
    from yolov6.utils.config import Config

    from fgkd.models.convert import convert
    from fgkd.tasks.detect import load_detector

    config = Config.fromfile(os.path.join(os.path.dirname(yolov6.__file__), "configs", f"{variant}.py"))
    config.training_mode = "repvgg"  # tools/train.py's default for n/s/m
    torch.manual_seed(0)
    source = build_model(config, 80, "cpu", **head)
    randomise_batchnorm(source)
    with torch.no_grad():
        for name, param in source.detect.named_parameters():
            if "preds" in name and name.endswith("weight"):
                torch.nn.init.normal_(param, std=0.01)  # the reference zero-initialises them: outputs would be equal trivially
    source = source.half().float()  # the release stores half precision; compare against what is stored
    torch.save({"model": source.half(), "ema": None, "updates": None, "optimizer": None, "epoch": -1},
               tmp_path / f"{variant}.pt")
    source.float().eval()
    detector, info = load_detector(convert(tmp_path / f"{variant}.pt", tmp_path / "fgkd.pt"))
    assert info["detector"]["name"] == variant and info["class_names"][0] == "person"
    detector.eval()
    images = torch.rand(2, 3, 128, 160)
    with torch.no_grad():
        reference = source(images)
        reference = reference[0] if isinstance(reference, (tuple, list)) else reference  # [B, A, 5 + nc], obj = 1
        boxes, scores = detector.decode(detector(images))
    xywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)
    torch.testing.assert_close(xywh, reference[..., :4], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(scores, reference[..., 5:], atol=1e-5, rtol=1e-5)
