"""Anomaly maps for images without labels, from ``anomaly.pt``, its checkpoint or its ONNX export (fgkd.runtime).

Each image is resized to the model's training size (square, as in training), ImageNet-normalised, mapped
(blurred 1 − cos maps, summed over scales) and scored (map maximum); the map is resized back to the image's own
size for the overlay. Writes ``predictions.json`` / ``scores.csv`` (with ``defective`` when a ``threshold`` is
given) and per image ``images/<stem>.png`` (image | heat-map overlay, one colour scale for the whole run).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from fgkd.data.anomaly_datamodule import MEAN_RGB, fit_square, normalize, unfit_square
from fgkd.io import atomic_write_json
from fgkd.predict import batches, iter_frames, output_stem
from fgkd.runtime import is_onnx, load_anomaly_runner, onnx_task
from fgkd.visualize import heat_overlay, side_by_side


def is_anomaly_artifact(path: str | os.PathLike[str]) -> bool:
    if is_onnx(path):
        return onnx_task(path) == "anomaly"
    try:
        payload = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - the detection loader reports unreadable files
        return False
    return isinstance(payload, dict) and (payload.get("task") == "anomaly"
                                          or "anomaly_model" in (payload.get("hyper_parameters") or {}))


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """image | image with the heat map blended in."""
    return side_by_side(image, heat_overlay(image, amap, vmin, vmax))


def predict_anomaly(ckpt: str | os.PathLike[str], files: list[Path], out_dir: str | os.PathLike[str], *,
                    imgsz: int | None = None, threshold: float | None = None, device: str = "auto",
                    batch_size: int = 8, save_images: bool = True, vid_stride: int = 1,
                    pixel_threshold: float | None = None) -> Path:
    """Maps, scores and (with thresholds) verdicts and masks for ``files``; returns the output folder.
    ``threshold`` / ``pixel_threshold`` None: the model's own (F1-optimal on its evaluated split, stored in
    ``anomaly.pt`` and the ONNX metadata), when it has them."""
    runner = load_anomaly_runner(ckpt, device)
    info = runner.info
    size = int(imgsz or info.get("imgsz") or 256)
    if runner.info.get("fixed_imgsz") and size != int(info["imgsz"]):
        raise ValueError(f"imgsz={imgsz}: {ckpt} was exported for {info['imgsz']} px; omit imgsz or export again")
    if threshold is None and info.get("threshold") is not None:
        threshold = float(info["threshold"])  # stored with the model
    if pixel_threshold is None and info.get("pixel_threshold") is not None:
        pixel_threshold = float(info["pixel_threshold"])
    resize_mode = str((info.get("data") or {}).get("resize_mode", "square"))  # as the model was trained
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if pixel_threshold is not None:
        (out / "masks").mkdir(exist_ok=True)
    records, maps = [], []
    for chunk in tqdm(batches(iter_frames(files, vid_stride), batch_size), desc="anomaly maps", unit="batch"):
        batch = torch.stack([normalize(fit_square(im, size, resize_mode, MEAN_RGB)) for _, im in chunk])
        batch_maps, scores = runner(batch)
        for (name, image), amap, score in zip(chunk, batch_maps.numpy(), scores.tolist(), strict=True):
            record = {"image": name, "score": round(float(score), 6)}
            if threshold is not None:
                record["defective"] = bool(score > threshold)
            records.append(record)
            maps.append((output_stem(name), image, amap))
    if save_images and maps:
        vmin = float(np.percentile(np.stack([m for _, _, m in maps]), 1))
        vmax = float(max(m.max() for _, _, m in maps))
        for stem, image, amap in maps:
            full = unfit_square(amap, image.shape[:2], resize_mode)
            png = out / "images" / f"{stem}.png"
            if not cv2.imwrite(str(png), cv2.cvtColor(overlay(image, full, vmin, vmax), cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {png}")
            if pixel_threshold is not None:  # the defect mask at the image's own size: 255 = anomalous
                mask_png = out / "masks" / f"{stem}.png"
                if not cv2.imwrite(str(mask_png), ((full > pixel_threshold) * 255).astype(np.uint8)):
                    raise OSError(f"could not write {mask_png}")
    atomic_write_json(out / "predictions.json", {"ckpt": str(ckpt), "task": "anomaly", "imgsz": size,
                                                 "resize_mode": resize_mode, "threshold": threshold,
                                                 "pixel_threshold": pixel_threshold, "model": info.get("model"),
                                                 "format": info.get("format"),
                                                 "trained_on": info.get("data"), "images": records})
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "score", *(["defective"] if threshold is not None else [])])
        for rec in records:
            writer.writerow([rec["image"], rec["score"], *([rec["defective"]] if threshold is not None else [])])
    return out
