"""ONNX export (fgkd.export): onnxruntime outputs equal the PyTorch model's, for detectors (raw and with NMS in the
graph, any batch size) and anomaly models (maps and scores); the CLI's errors name the key."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from fgkd.export import ExportOptions, export
from fgkd.export.__main__ import main as export_main
from fgkd.models.detectors.base import build_detector
from fgkd.tasks.detect import save_detector

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZE = 96


def _detector_file(tmp_path, name: str, seed: int = 0):
    torch.manual_seed(seed)
    detector = build_detector(name, 3)
    # trained-looking BatchNorm statistics and class biases, so fusing and NMS have something to get wrong
    with torch.no_grad():
        for module in detector.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, torch.nn.Conv2d) and module.out_channels == 3 and module.bias is not None:
                module.bias.uniform_(-4.0, -1.0)  # class logits: scores of 0.02-0.3, as a detector in training
    path = save_detector(tmp_path / f"{name}.pt", detector, {"name": name, "num_classes": 3},
                         ["corrosion", "damaged_insulation", "dent"], imgsz=SIZE)
    return path, detector.eval()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["yolov8n", "yolov6n", "yolov5n"])
def test_detector_onnx_equals_pytorch_for_any_batch_size(tmp_path, name):
    ckpt, detector = _detector_file(tmp_path, name)
    out = export(ExportOptions(ckpt=str(ckpt), dynamic=True))
    assert out == tmp_path / f"{name}.onnx"
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["fgkd"])
    assert (meta["task"], meta["imgsz"], meta["class_names"][2], meta["nms"]) == ("detect", SIZE, "dent", None)
    images = torch.rand(3, 3, SIZE, SIZE)  # traced with batch 2: batch 3 shows the dynamic axis
    boxes, scores = _session(out).run(None, {"images": images.numpy()})
    with torch.no_grad():  # the unfused model: fusing (Conv+BN, RepVGG) must not change the outputs
        ref_boxes, ref_scores = (t.numpy() for t in detector.decode(detector(images)))
    assert boxes.shape == ref_boxes.shape and scores.shape == ref_scores.shape
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-3)  # pixels
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


def test_detector_onnx_with_nms_selects_what_pytorch_postprocess_selects(tmp_path):
    ckpt, detector = _detector_file(tmp_path, "yolov8n", seed=1)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():  # a threshold that keeps the top 1 % of the (random) scores: overlapping candidates
        conf, iou = float(detector(images)["cls"].sigmoid().quantile(0.99)), 0.5
    out = export(ExportOptions(ckpt=str(ckpt), dynamic=True, nms=True, conf=conf, iou=iou, out=str(tmp_path / "n.onnx")))
    (detections,) = _session(out).run(None, {"images": images.numpy()})
    with torch.no_grad():
        reference = detector.postprocess(detector(images), conf=conf, iou=iou, max_det=10_000, multi_label=True)
    assert detections.shape[1] == 7 and len(detections) == sum(len(r["scores"]) for r in reference) > 5
    with torch.no_grad():
        candidates = int((detector(images)["cls"].sigmoid() > conf).sum())
    assert candidates > len(detections)  # NMS suppressed overlapping candidates
    for b, ref in enumerate(reference):
        mine = detections[detections[:, 0] == b]
        order = np.lexsort((-mine[:, 5], mine[:, 6]))  # by class, then descending score
        ref_order = np.lexsort((-ref["scores"].numpy(), ref["labels"].numpy()))
        np.testing.assert_array_equal(mine[order, 6], ref["labels"].numpy()[ref_order])
        np.testing.assert_allclose(mine[order, 5], ref["scores"].numpy()[ref_order], atol=1e-5)
        np.testing.assert_allclose(mine[order, 1:5], ref["boxes"].numpy()[ref_order], atol=1e-3)


@pytest.mark.parametrize("name,options", [("rd", {"encoder": "resnet18", "oce_blocks": 1}),
                                          ("bsdrd", {"encoder": "resnet18", "oce_blocks": 1, "detail_width": 32})])
def test_anomaly_onnx_maps_and_scores_equal_pytorch(tmp_path, name, options):
    from fgkd.models.anomaly.components.encoder import RandomEncoderWarning
    from fgkd.models.registry import build_model
    from fgkd.tasks.anomaly import save_anomaly_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomEncoderWarning)
        model = build_model(name, 1, **options).eval()  # bsdrd: the wavelet transforms (ptwt) in the graph too
    ckpt = save_anomaly_model(tmp_path / "anomaly.pt", model, name, options,
                              {"imgsz": 64, "data": {"resize_mode": "square"}})
    if name == "bsdrd":  # ptwt's wavelet transform traces the batch size into the graph: refused, named
        with pytest.raises(ValueError, match="dynamic=false"):
            export(ExportOptions(ckpt=str(ckpt), dynamic=True))
        assert not list(tmp_path.glob("*.onnx*"))  # nothing half-written left behind
    dynamic = name != "bsdrd"
    out = export(ExportOptions(ckpt=str(ckpt), dynamic=dynamic))
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["fgkd"])
    assert (meta["task"], meta["imgsz"], meta["resize_mode"]) == ("anomaly", 64, "square")
    images = torch.randn(3 if dynamic else 1, 3, 64, 64)
    maps, scores = _session(out).run(None, {"images": images.numpy()})
    ref_maps, ref_scores = model.predict(images)  # float64 blur: the float32 graph differs by < 1e-5
    np.testing.assert_allclose(maps, ref_maps.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5, rtol=1e-4)


def test_export_cli_errors_name_the_key(tmp_path, capsys):
    ckpt, _ = _detector_file(tmp_path, "yolov8n")
    cases = [([f"ckpt={ckpt}", "formt=onnx"], "unknown option 'formt'"),
             ([f"ckpt={ckpt}", "format=tflite"], "format='tflite'"),
             ([f"ckpt={ckpt}", "nms=maybe"], "nms='maybe': expected true or false"),
             ([f"ckpt={tmp_path / 'missing.pt'}"], "no such file"),
             ([f"ckpt={ckpt}", "imgsz=100"], "multiple of 32"),
             (["dynamic=true"], "ckpt=")]
    for argv, message in cases:
        assert export_main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    if not torch.cuda.is_available():
        assert export_main([f"ckpt={ckpt}", "half=true"]) == 2
        assert "CUDA" in capsys.readouterr().err


def _detections(path):
    payload = json.loads((path / "predictions.json").read_text())
    return {rec["image"]: sorted((d["label"], d["score"], *d["box_xyxy"]) for d in rec["detections"])
            for rec in payload["images"]}


@pytest.mark.parametrize("nms", [False, True])
def test_predict_on_the_onnx_file_writes_what_the_pytorch_file_gives(tmp_path, tiny_synthpipes, nms):
    from fgkd.predict import predict

    ckpt, _ = _detector_file(tmp_path, "yolov6n")
    source = tiny_synthpipes / "images" / "train"
    reference = _detections(predict(ckpt, source, tmp_path / "pt", conf=0.01, iou=0.7, save_images=False, batch_size=3))
    onnx_file = export(ExportOptions(ckpt=str(ckpt), nms=nms, conf=0.01, iou=0.7, dynamic=not nms))  # nms: batch 1
    got = _detections(predict(onnx_file, source, tmp_path / "onnx", conf=0.01, iou=0.7, save_images=False, batch_size=3))
    assert got.keys() == reference.keys() and sum(map(len, reference.values())) > 0
    for image, dets in reference.items():
        if nms:  # the graph's NMS is class-wise over every class above conf (PyTorch: the best class per anchor)
            assert {d[:2] for d in dets} <= {d[:2] for d in got[image]}
            continue
        assert len(got[image]) == len(dets), image
        np.testing.assert_allclose(np.array(got[image]), np.array(dets), atol=0.02)  # rounded px and scores


def test_predict_reads_video_frames(tmp_path, tiny_synthpipes):
    import cv2

    from fgkd.data.imageio import read_image
    from fgkd.predict import iter_images, predict

    ckpt, _ = _detector_file(tmp_path, "yolov8n")
    frames = [read_image(p) for p in iter_images(tiny_synthpipes / "images" / "train")][:3]
    height, width = frames[0].shape[:2]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (width, height))
    for frame in frames * 2:  # 6 frames
        writer.write(cv2.cvtColor(cv2.resize(frame, (width, height)), cv2.COLOR_RGB2BGR))
    writer.release()
    out = predict(ckpt, video, tmp_path / "v", conf=0.01, vid_stride=2, batch_size=2)
    payload = json.loads((out / "predictions.json").read_text())
    assert [rec["image"] for rec in payload["images"]] == [f"{video}#{i}" for i in (0, 2, 4)]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["clip_000000.png", "clip_000002.png", "clip_000004.png"]


def test_predict_anomaly_on_the_onnx_file_matches_the_pytorch_file(tmp_path, tiny_synthpipes):
    from fgkd.models.anomaly.components.encoder import RandomEncoderWarning
    from fgkd.models.registry import build_model
    from fgkd.predict import iter_images
    from fgkd.predict_anomaly import predict_anomaly
    from fgkd.tasks.anomaly import save_anomaly_model

    torch.manual_seed(0)
    options = {"encoder": "resnet18", "oce_blocks": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomEncoderWarning)
        model = build_model("rd", 1, **options).eval()
    ckpt = save_anomaly_model(tmp_path / "anomaly.pt", model, "rd", options, {"imgsz": 64, "data": {"resize_mode": "letterbox"}})
    onnx_file = export(ExportOptions(ckpt=str(ckpt)))  # batch 1: the runner feeds one image at a time
    files = iter_images(tiny_synthpipes / "images" / "val")

    def scores(model_file, name):
        out = predict_anomaly(model_file, files, tmp_path / name, batch_size=2, save_images=name == "onnx")
        return [rec["score"] for rec in json.loads((out / "predictions.json").read_text())["images"]]

    np.testing.assert_allclose(scores(onnx_file, "onnx"), scores(ckpt, "pt"), rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "onnx" / "images").iterdir())) == len(files)


def test_rtdetr_exports_nms_free_and_predicts_what_pytorch_selects(tmp_path):
    from fgkd.runtime import load_detector_runner

    torch.manual_seed(0)
    detector = build_detector("rtdetr_r18", 3)
    with torch.no_grad():
        detector.decoder.enc_score_head.weight.mul_(50)  # separated encoder scores: a stable top-k selection
    ckpt = save_detector(tmp_path / "rt.pt", detector, {"name": "rtdetr_r18", "num_classes": 3}, ["a", "b", "c"],
                         imgsz=128)
    with pytest.raises(ValueError, match="NMS-free"):
        export(ExportOptions(ckpt=str(ckpt), nms=True))
    out = export(ExportOptions(ckpt=str(ckpt), dynamic=True))
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["fgkd"])
    assert meta["nms_free"] is True and meta["nms"] is None
    images = torch.rand(2, 3, 128, 128)
    onnx_dets = load_detector_runner(out, "cpu")(images, conf=0.0, iou=0.7, max_det=20)
    torch_dets = load_detector_runner(ckpt, "cpu")(images, conf=0.0, iou=0.7, max_det=20)
    for mine, ref in zip(onnx_dets, torch_dets, strict=True):
        assert len(mine["scores"]) == len(ref["scores"]) == 20  # no NMS: every selected query is kept
        rows = torch.cat([mine["boxes"], mine["scores"][:, None]], 1)
        ref_rows = torch.cat([ref["boxes"], ref["scores"][:, None]], 1)
        assert torch.cdist(rows, ref_rows).min(1).values.max() < 0.25  # pixels; near-equal scores may swap
