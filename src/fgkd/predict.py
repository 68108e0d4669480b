"""Mask-free inference with a trained detector (the FAKD student needs no mask at inference).

``predict(ckpt, source, …)`` letterboxes each image exactly like validation, runs the detector (``detector.pt``,
a run's checkpoint or an exported ``.onnx``: fgkd.runtime) in batches, maps the boxes back to the original
image's pixels and writes ``predictions.json`` / ``predictions.csv`` and, per image, an annotated PNG.
Sources: an image, a folder (recursively), a ``.txt`` list of paths, or a video file (every frame, or every
``vid_stride``-th; frames are named ``<video>#<frame>``).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from fgkd.data.augment import letterbox, resize_long_side
from fgkd.data.imageio import IMAGE_SUFFIXES, read_image
from fgkd.runtime import load_detector_runner

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class Prediction:
    path: Path  # the image, or ``<video>#<frame>``
    boxes: np.ndarray  # [N, 4] xyxy in original image pixels
    scores: np.ndarray
    labels: np.ndarray


def iter_images(source: str | os.PathLike[str]) -> list[Path]:
    """An image or video file, a folder (recursively: its images and videos) or a .txt list of paths."""
    source = Path(source).expanduser()
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes)
    elif source.suffix.lower() == ".txt" and source.is_file():
        files = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"source {source} is neither an image, a video, a folder nor a .txt list of images")
    if not files:
        raise FileNotFoundError(f"no images or videos ({', '.join(suffixes)}) under {source}")
    return files


def iter_frames(files: list[Path], vid_stride: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, RGB image)`` per image file and per kept video frame (``<video>#<frame index>``)."""
    for path in files:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            yield str(path), read_image(path)
            continue
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise FileNotFoundError(f"{path}: OpenCV cannot open this video (missing file or codec)")
        index = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % vid_stride == 0:
                    yield f"{path}#{index}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            capture.release()


def output_stem(name: str) -> str:
    """The PNG name of an input: the image's stem, ``<video stem>_<frame:06d>`` for a video frame."""
    path, _, frame = name.partition("#")
    return f"{Path(path).stem}_{int(frame):06d}" if frame else Path(path).stem


def batches(frames: Iterator[tuple[str, np.ndarray]], size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    chunk: list[tuple[str, np.ndarray]] = []
    for item in frames:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prepare(image: np.ndarray, imgsz: int) -> tuple[torch.Tensor, float, int, int]:
    """Letterbox to ``imgsz``; returns (tensor [3,S,S] in [0,1], scale, pad_x, pad_y)."""
    height, width = image.shape[:2]
    resized = resize_long_side(image, imgsz)
    scale = resized.shape[1] / width
    boxed, _, pad_x, pad_y = letterbox(resized, np.zeros(resized.shape[:2], bool), imgsz)
    return torch.from_numpy(boxed).permute(2, 0, 1).float().div_(255.0), scale, pad_x, pad_y


def to_original(boxes: torch.Tensor, scale: float, pad_x: int, pad_y: int, height: int, width: int) -> np.ndarray:
    out = boxes.detach().cpu().double().numpy().copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - pad_x) / scale
    out[:, [1, 3]] = (out[:, [1, 3]] - pad_y) / scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


_PALETTE = [(230, 80, 40), (40, 160, 230), (240, 200, 40), (120, 200, 80), (200, 90, 200), (90, 220, 210)]


def draw(image: np.ndarray, pred: Prediction, names: list[str]) -> np.ndarray:
    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for box, score, label in zip(pred.boxes, pred.scores, pred.labels, strict=True):
        colour = _PALETTE[int(label) % len(_PALETTE)]
        x1, y1, x2, y2 = (round(v) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{names[int(label)] if int(label) < len(names) else label} {score:.2f}"
        font = 0.4 * thickness
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        # the label above the box, or inside its top edge when that would leave the image; never past the right
        tx = min(max(0, x1), max(0, image.shape[1] - tw - 2))
        top = y1 - th - 4 if y1 - th - 4 >= 0 else min(y1, image.shape[0] - th - 4)
        top = max(0, top)
        cv2.rectangle(canvas, (tx, top), (tx + tw + 2, top + th + 4), colour, -1)
        cv2.putText(canvas, text, (tx + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


def run_detector(runner: Any, frames: Iterator[tuple[str, np.ndarray]], imgsz: int, conf: float, iou: float,
                 max_det: int, batch_size: int = 8) -> Iterator[tuple[Prediction, np.ndarray]]:
    """``(prediction in original pixels, image)`` per frame, ``batch_size`` letterboxed images per forward."""
    for chunk in batches(frames, batch_size):
        prepared = [prepare(image, imgsz) for _, image in chunk]
        outputs = runner(torch.stack([p[0] for p in prepared]), conf=conf, iou=iou, max_det=max_det)
        for (name, image), (_, scale, pad_x, pad_y), out in zip(chunk, prepared, outputs, strict=True):
            boxes = to_original(out["boxes"], scale, pad_x, pad_y, *image.shape[:2])
            yield Prediction(Path(name), boxes, out["scores"].numpy(), out["labels"].numpy()), image


def predict(ckpt: str | os.PathLike[str], source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, device: str = "auto",
            save_images: bool = True, batch_size: int = 8, vid_stride: int = 1) -> Path:
    """Predict on ``source``; returns the output folder (predictions.json/csv + annotated PNGs).

    ``imgsz`` None: the size the detector was trained at (stored in ``detector.pt`` / the ONNX metadata; 640 for
    files without it); a different size is allowed for PyTorch files and said in one warning line (an ONNX graph
    has its size built in)."""
    files = iter_images(source)
    runner = load_detector_runner(ckpt, device)
    trained = runner.info.get("imgsz")
    if imgsz is None:
        imgsz = int(trained or 640)
    elif trained and int(imgsz) != int(trained):
        if runner.info.get("fixed_imgsz"):
            raise ValueError(f"imgsz={imgsz}: {ckpt} was exported for {trained} px; omit imgsz or export again "
                             f"with imgsz={imgsz}")
        print(f"warning: predicting at imgsz={imgsz}, but {ckpt} was trained at {trained} (omit imgsz to use it)",
              flush=True)
    imgsz = int(imgsz)
    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32, got {imgsz}")
    if batch_size < 1 or vid_stride < 1:
        raise ValueError(f"batch={batch_size} / vid_stride={vid_stride}: both must be >= 1")
    names = list(runner.info.get("class_names") or [])
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    started = time.perf_counter()
    progress = tqdm(run_detector(runner, iter_frames(files, vid_stride), imgsz, conf, iou, max_det, batch_size),
                    desc="predict", unit="img", total=None if any(p.suffix.lower() in VIDEO_SUFFIXES for p in files)
                    else len(files))
    for pred, image in progress:
        detections = [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4),
                       "label": int(c), "name": names[int(c)] if int(c) < len(names) else str(int(c))}
                      for b, s, c in zip(pred.boxes, pred.scores, pred.labels, strict=True)]
        records.append({"image": str(pred.path), "detections": detections})
        if save_images:
            png = out / "images" / f"{output_stem(str(pred.path))}.png"
            if not cv2.imwrite(str(png), cv2.cvtColor(draw(image, pred, names), cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {png}")
    tmp = out / "predictions.json.tmp"
    tmp.write_text(json.dumps({"ckpt": str(ckpt), "format": runner.info.get("format"), "imgsz": imgsz,
                               "trained_imgsz": trained, "conf": conf, "iou": iou, "class_names": names,
                               "images": records}, indent=1))
    os.replace(tmp, out / "predictions.json")
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "name", "label", "score", "x1", "y1", "x2", "y2"])
        for rec in records:
            for d in rec["detections"]:
                writer.writerow([rec["image"], d["name"], d["label"], d["score"], *d["box_xyxy"]])
    seconds = time.perf_counter() - started
    print(f"{len(records)} images, {sum(len(r['detections']) for r in records)} detections (conf >= {conf}) at "
          f"{imgsz} px, {seconds * 1000 / max(len(records), 1):.1f} ms/image", flush=True)
    return out
