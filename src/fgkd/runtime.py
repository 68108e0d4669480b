"""Model runners for inference: a PyTorch model file or an exported ONNX file (fgkd.export) behind one call.

``load_detector_runner(path)`` -> a callable ``runner(batch, conf, iou, max_det)`` giving the detections per
image (``{boxes, scores, labels}``, letterboxed input pixels) and ``runner.info`` (class names, imgsz);
``load_anomaly_runner(path)`` -> ``runner(batch)`` giving ``(maps [B, S, S], scores [B])`` and ``runner.info``
(imgsz, resize mode, threshold). An ONNX file describes itself (its ``fgkd`` metadata), so no checkpoint is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fgkd.models.detectors.ops import select_detections, select_top_queries

ONNX_SUFFIX = ".onnx"


def is_onnx(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def pick_device(device: str) -> torch.device:
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))


def onnx_session(path: str | os.PathLike[str], device: str = "auto") -> tuple[Any, dict[str, Any]]:
    """``(onnxruntime session, the file's fgkd metadata)``; a clear error for files fgkd did not export."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a project dependency
        raise RuntimeError("predicting with an .onnx file needs onnxruntime: pip install onnxruntime") from None
    path = Path(path).expanduser()
    providers = ["CPUExecutionProvider"]
    if pick_device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    raw = session.get_modelmeta().custom_metadata_map.get("fgkd")
    if not raw:
        raise ValueError(f"{path}: an ONNX file without fgkd metadata; export it with `python -m fgkd.export ckpt=…`")
    return session, json.loads(raw)


class _TorchDetector:
    def __init__(self, path: str | os.PathLike[str], device: str) -> None:
        from fgkd.tasks.detect import load_detector

        self.device = pick_device(device)
        self.detector, info = load_detector(path, map_location="cpu")
        self.detector.eval().to(self.device)
        self.info = {"class_names": list(info.get("class_names") or []), "imgsz": info.get("imgsz"), "format": "pytorch"}

    def __call__(self, batch: torch.Tensor, conf: float, iou: float, max_det: int) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            out = self.detector.postprocess(self.detector(batch.to(self.device)), conf=conf, iou=iou, max_det=max_det)
        return [{k: v.cpu() for k, v in o.items()} for o in out]


class _OnnxDetector:
    def __init__(self, path: str | os.PathLike[str], device: str) -> None:
        self.session, meta = onnx_session(path, device)
        if meta.get("task") != "detect":
            raise ValueError(f"{path}: an exported {meta.get('task')} model, not a detector")
        self.meta = meta
        self.info = {"class_names": list(meta.get("class_names") or []), "imgsz": meta["imgsz"], "format": "onnx",
                     "fixed_imgsz": True}
        self._warned: set[str] = set()

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.meta.get("dynamic"):
            return self.session.run(None, {"images": batch})
        parts = [self.session.run(None, {"images": batch[i:i + 1]}) for i in range(len(batch))]  # batch-1 graph
        if self.meta.get("nms"):  # each part's rows say batch 0: renumber them
            rows = [p[0].copy() for p in parts]
            for i, r in enumerate(rows):
                r[:, 0] = i
            return [np.concatenate(rows)]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    def __call__(self, batch: torch.Tensor, conf: float, iou: float, max_det: int) -> list[dict[str, torch.Tensor]]:
        outputs = self._run(batch.cpu().numpy().astype(np.float16 if self.meta.get("half") else np.float32))
        nms = self.meta.get("nms")
        if not nms:
            boxes, scores = (torch.from_numpy(o).float() for o in outputs)
            if self.meta.get("nms_free"):  # set prediction (RT-DETR): the best queries, as its postprocess
                return select_top_queries(boxes, scores, conf, max_det)
            return select_detections(boxes, scores, conf, iou, max_det)
        baked_conf, baked_iou = float(nms["conf"]), float(nms["iou"])
        if conf < baked_conf and "conf" not in self._warned:
            self._warned.add("conf")
            print(f"warning: the graph's NMS keeps scores above {baked_conf} (export conf=…); conf={conf} cannot go lower",
                  flush=True)
        if abs(iou - baked_iou) > 1e-9 and "iou" not in self._warned:
            self._warned.add("iou")
            print(f"warning: the graph's NMS uses iou={baked_iou} (set at export); iou={iou} is ignored", flush=True)
        detections = torch.from_numpy(outputs[0]).float()
        results = []
        for b in range(batch.shape[0]):
            rows = detections[(detections[:, 0] == b) & (detections[:, 5] >= conf)]
            rows = rows[rows[:, 5].argsort(descending=True)][:max_det]
            results.append({"boxes": rows[:, 1:5], "scores": rows[:, 5], "labels": rows[:, 6].long()})
        return results


def load_detector_runner(path: str | os.PathLike[str], device: str = "auto") -> _TorchDetector | _OnnxDetector:
    return _OnnxDetector(path, device) if is_onnx(path) else _TorchDetector(path, device)


class _TorchAnomaly:
    def __init__(self, path: str | os.PathLike[str], device: str) -> None:
        from fgkd.tasks.anomaly import load_anomaly_model

        self.device = pick_device(device)
        self.model, info = load_anomaly_model(path)
        self.model.to(self.device).eval()
        self.info = {**info, "format": "pytorch"}

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.model.predict(batch.to(self.device))
        return maps.cpu(), scores.cpu()


class _OnnxAnomaly:
    def __init__(self, path: str | os.PathLike[str], device: str) -> None:
        self.session, meta = onnx_session(path, device)
        if meta.get("task") != "anomaly":
            raise ValueError(f"{path}: an exported {meta.get('task')} model, not an anomaly model")
        self.meta = meta
        self.info = {"imgsz": meta["imgsz"], "data": {"resize_mode": meta.get("resize_mode", "square")},
                     "model": meta.get("model"), "threshold": meta.get("threshold"),
                     "pixel_threshold": meta.get("pixel_threshold"), "format": "onnx", "fixed_imgsz": True}

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.cpu().numpy().astype(np.float16 if self.meta.get("half") else np.float32)
        if self.meta.get("dynamic"):
            maps, scores = self.session.run(None, {"images": x})
        else:
            parts = [self.session.run(None, {"images": x[i:i + 1]}) for i in range(len(x))]
            maps, scores = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return torch.from_numpy(maps).float(), torch.from_numpy(scores).float()


def load_anomaly_runner(path: str | os.PathLike[str], device: str = "auto") -> _TorchAnomaly | _OnnxAnomaly:
    return _OnnxAnomaly(path, device) if is_onnx(path) else _TorchAnomaly(path, device)


def onnx_task(path: str | os.PathLike[str]) -> str:
    """``detect`` or ``anomaly``: the task an exported file was made for (its metadata)."""
    return str(onnx_session(path, "cpu")[1].get("task"))
