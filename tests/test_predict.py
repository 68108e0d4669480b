"""Mask-free inference: letterbox inversion, outputs on disk, the predict.py entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fgkd.predict import iter_images, predict, prepare, to_original

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = ["corrosion", "damaged_insulation", "dent"]


def test_letterbox_inversion_maps_boxes_back_to_original_pixels():
    image = np.zeros((100, 200, 3), np.uint8)  # landscape: scale 0.32 to 64 px, vertical padding
    tensor, scale, pad_x, pad_y = prepare(image, 64)
    assert tensor.shape == (3, 64, 64) and scale == pytest.approx(0.32) and (pad_x, pad_y) == (0, 16)
    # original box (50, 25)-(150, 75) sits at (16, 24)-(48, 40) in the network input
    boxes = torch.tensor([[16.0, 24.0, 48.0, 40.0], [-5.0, 10.0, 70.0, 60.0]])
    back = to_original(boxes, scale, pad_x, pad_y, 100, 200)
    np.testing.assert_allclose(back[0], [50, 25, 150, 75], atol=1e-6)
    np.testing.assert_allclose(back[1], [0, 0, 200, 100], atol=1e-6)  # clipped to the image


def test_sources_folder_list_and_errors(tmp_path, tiny_synthpipes):
    folder = tiny_synthpipes / "images" / "val"
    files = iter_images(folder)
    assert files and all(f.suffix == ".jpg" for f in files)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(f) for f in files[:2]))
    assert iter_images(listing) == files[:2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        iter_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither"):
        iter_images(tmp_path / "missing.jpg")


@pytest.fixture
def detector_file(tmp_path):
    from fgkd.models import build_detector
    from fgkd.tasks.detect import save_detector

    torch.manual_seed(0)
    model = build_detector("yolov8n", num_classes=3)
    return save_detector(tmp_path / "detector.pt", model, {"name": "yolov8n", "num_classes": 3, "kwargs": {}}, NAMES)


def test_predict_writes_json_csv_and_annotated_images(tmp_path, tiny_synthpipes, detector_file):
    from fgkd.data.imageio import read_image

    source = tiny_synthpipes / "images" / "train"
    out = predict(detector_file, source, tmp_path / "pred", imgsz=64, conf=0.001, max_det=5)
    payload = json.loads((out / "predictions.json").read_text())
    files = iter_images(source)
    assert [rec["image"] for rec in payload["images"]] == [str(f) for f in files]
    assert payload["class_names"] == NAMES
    for rec, path in zip(payload["images"], files, strict=True):
        height, width = read_image(path).shape[:2]
        assert 0 < len(rec["detections"]) <= 5
        for det in rec["detections"]:
            x1, y1, x2, y2 = det["box_xyxy"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert det["name"] == NAMES[det["label"]] and 0.001 <= det["score"] <= 1
        assert (out / "images" / f"{path.stem}.png").is_file()
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "image,name,label,score,x1,y1,x2,y2"
    assert len(rows) - 1 == sum(len(rec["detections"]) for rec in payload["images"])


def test_predict_entry_point(tmp_path, tiny_synthpipes, detector_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "predict.py"), f"ckpt={detector_file}",
         f"source={tiny_synthpipes / 'images' / 'val'}", "imgsz=64", "conf=0.001",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "predictions.json").is_file()
    missing = subprocess.run([sys.executable, str(REPO_ROOT / "predict.py"), f"hydra.run.dir={tmp_path / 'r2'}"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert missing.returncode != 0 and "ckpt=" in (missing.stdout + missing.stderr)


def test_predict_uses_the_trained_size_and_warns_on_a_mismatch(tmp_path, tiny_synthpipes, capsys):
    """Issue 11.6: a model trained at 160 px was run at the default 640 px without a word."""
    from fgkd.models.detectors.base import build_detector
    from fgkd.tasks.detect import save_detector

    torch.manual_seed(0)
    path = save_detector(tmp_path / "d.pt", build_detector("yolov8n", num_classes=3),
                         {"name": "yolov8n", "num_classes": 3, "kwargs": {}}, NAMES, imgsz=96)
    source = tiny_synthpipes / "images" / "val"
    out = predict(path, source, tmp_path / "a", conf=0.001, max_det=2, save_images=False)
    assert json.loads((out / "predictions.json").read_text())["imgsz"] == 96
    printed = capsys.readouterr().out
    assert "warning" not in printed and "ms/image" in printed and "detections" in printed  # count and speed
    out = predict(path, source, tmp_path / "b", imgsz=64, conf=0.001, max_det=2, save_images=False)
    assert json.loads((out / "predictions.json").read_text())["imgsz"] == 64
    assert "trained at 96" in capsys.readouterr().out


def test_labels_of_boxes_at_the_image_edge_stay_inside_the_image():
    """Issue 11.6: the label of a box at the top/right edge was cut off ("damaged.")."""
    from fgkd.predict import Prediction, draw

    image = np.zeros((60, 80, 3), np.uint8)
    pred = Prediction(Path("x.png"), np.array([[60.0, 0.0, 80.0, 20.0]]), np.array([0.9]), np.array([0]))
    canvas = draw(image, pred, ["damaged_insulation"])
    assert (canvas[:, 0] != 0).any()  # the wide label is pulled left to start at the border, not cut at the right
    assert (canvas[0:14] != 0).any()  # drawn inside the top edge, not above the image
