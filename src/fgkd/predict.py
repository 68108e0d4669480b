"""Mask-free inference with a trained detector (the FAKD student needs no mask at inference).

``predict(ckpt, source, …)`` letterboxes each image exactly like validation, runs the detector, maps the
boxes back to the original image's pixels and writes ``predictions.json`` / ``predictions.csv`` and, per
image, an annotated PNG.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from fgkd.data.augment import letterbox, resize_long_side
from fgkd.data.imageio import IMAGE_SUFFIXES, read_image
from fgkd.tasks.detect import load_detector


@dataclass
class Prediction:
    path: Path
    boxes: np.ndarray  # [N, 4] xyxy in original image pixels
    scores: np.ndarray
    labels: np.ndarray


def iter_images(source: str | os.PathLike[str]) -> list[Path]:
    """An image file, a folder (recursively) or a .txt list of paths."""
    source = Path(source).expanduser()
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix.lower() == ".txt" and source.is_file():
        files = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"source {source} is neither an image, a folder nor a .txt list of images")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {source}")
    return files


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


def run_detector(ckpt: str | os.PathLike[str], files: list[Path], imgsz: int, conf: float, iou: float,
                 max_det: int, device: str = "auto", batch_size: int = 8) -> Iterator[Prediction]:
    target = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    detector, _ = load_detector(ckpt, map_location="cpu")
    detector.eval().to(target)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images = [read_image(p) for p in chunk]
        prepared = [prepare(img, imgsz) for img in images]
        batch = torch.stack([p[0] for p in prepared]).to(target)
        with torch.no_grad():
            outputs = detector.postprocess(detector(batch), conf=conf, iou=iou, max_det=max_det)
        for path, image, (_, scale, pad_x, pad_y), out in zip(chunk, images, prepared, outputs, strict=True):
            boxes = to_original(out["boxes"], scale, pad_x, pad_y, *image.shape[:2])
            yield Prediction(path, boxes, out["scores"].cpu().numpy(), out["labels"].cpu().numpy())


def predict(ckpt: str | os.PathLike[str], source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, device: str = "auto",
            save_images: bool = True) -> Path:
    """Predict on ``source``; returns the output folder (predictions.json/csv + annotated PNGs).

    ``imgsz`` None: the size the detector was trained at (stored in ``detector.pt``; 640 for files without
    it); a different size is allowed and said in one warning line."""
    files = iter_images(source)
    _, info = load_detector(ckpt, map_location="cpu")
    trained = info.get("imgsz")
    if imgsz is None:
        imgsz = int(trained or 640)
    elif trained and int(imgsz) != int(trained):
        print(f"warning: predicting at imgsz={imgsz}, but {ckpt} was trained at {trained} (omit imgsz to use it)",
              flush=True)
    imgsz = int(imgsz)
    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32, got {imgsz}")
    names = list(info.get("class_names") or [])
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    started = time.perf_counter()
    for pred in tqdm(run_detector(ckpt, files, imgsz, conf, iou, max_det, device), total=len(files),
                     desc="predict", unit="img"):
        detections = [{"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4),
                       "label": int(c), "name": names[int(c)] if int(c) < len(names) else str(int(c))}
                      for b, s, c in zip(pred.boxes, pred.scores, pred.labels, strict=True)]
        records.append({"image": str(pred.path), "detections": detections})
        if save_images:
            image = read_image(pred.path)
            png = out / "images" / f"{pred.path.stem}.png"
            cv2.imwrite(str(png), cv2.cvtColor(draw(image, pred, names), cv2.COLOR_RGB2BGR))
    tmp = out / "predictions.json.tmp"
    tmp.write_text(json.dumps({"ckpt": str(ckpt), "imgsz": imgsz, "trained_imgsz": trained, "conf": conf, "iou": iou,
                               "class_names": names, "images": records}, indent=1))
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
