"""Export a trained model to ONNX: ``python -m fgkd.export ckpt=<detector.pt | anomaly.pt> [format=onnx]
[dynamic=true] [nms=true] [half=false] [opset=17] [out=PATH] [conf=0.25] [iou=0.7] [max_det=300]``.

* detectors: the deploy-fused student (Conv+BN folded, YOLOv6 RepVGG blocks re-parameterised), input
  ``images float[B, 3, S, S]`` in [0, 1] (letterboxed as in validation), outputs ``boxes [B, A, 4]`` (xyxy, input
  pixels) and ``scores [B, A, nc]``; with ``nms=true`` the graph ends in ONNX ``NonMaxSuppression`` and outputs
  ``detections [K, 7]`` (``batch_index, x1, y1, x2, y2, score, class``; class-wise, conf/iou/max_det baked in).
* anomaly models: encoder + bottleneck + decoder + map + blur + score in one graph, input ImageNet-normalised
  ``images float[B, 3, S, S]``, outputs ``anomaly_map [B, S, S]`` and ``score [B]``.
* ``dynamic=true``: any batch size (the image size stays the trained one: anchors and maps are built for it).
* ``half=true``: fp16 weights and input, exported on a CUDA device (CPU runtimes have few fp16 kernels).

The file carries its own description in the ONNX metadata (``fgkd`` key, JSON: task, class names, imgsz,
resize mode, NMS settings ...), so ``predict.py ckpt=model.onnx`` needs nothing else. Parity with PyTorch:
tests/test_export.py (onnxruntime); timing: ``benchmarks/onnx_vs_torch.py``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("onnx",)
#: the ONNX opset of every export (NonMaxSuppression needs >= 11; 17 is supported by every current runtime)
DEFAULT_OPSET = 17
METADATA_KEY = "fgkd"


@dataclass
class ExportOptions:
    ckpt: str
    format: str = "onnx"
    out: str | None = None
    dynamic: bool = False
    nms: bool = False
    half: bool = False
    opset: int = DEFAULT_OPSET
    imgsz: int | None = None
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300

    def check(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r}: choose one of {', '.join(FORMATS)}")
        if not Path(self.ckpt).expanduser().is_file():
            raise FileNotFoundError(f"ckpt={self.ckpt}: no such file (a run's detector.pt or anomaly.pt)")
        if not 11 <= int(self.opset) <= 21:
            raise ValueError(f"opset={self.opset}: choose 11 ... 21 (NonMaxSuppression needs 11)")
        if self.imgsz is not None and int(self.imgsz) % 32:
            raise ValueError(f"imgsz={self.imgsz}: must be a multiple of 32")
        if not 0 <= self.conf < 1 or not 0 < self.iou <= 1 or self.max_det < 1:
            raise ValueError(f"conf={self.conf} / iou={self.iou} / max_det={self.max_det}: need 0 <= conf < 1, "
                             "0 < iou <= 1, max_det >= 1")


def export(options: ExportOptions) -> Path:
    """Write the ONNX file and return its path (default: beside ``ckpt``, ``<stem>[-nms][-fp16].onnx``)."""
    import onnx
    import torch

    from fgkd.predict_anomaly import is_anomaly_artifact

    options.check()
    ckpt = Path(options.ckpt).expanduser()
    anomaly = is_anomaly_artifact(ckpt)
    if anomaly and options.nms:
        raise ValueError("nms=true is for detectors; an anomaly model outputs maps and scores")
    device = torch.device("cpu")
    if options.half:
        if not torch.cuda.is_available():
            raise RuntimeError("half=true exports in fp16 on a CUDA device, and none is available here; "
                               "export in fp32 (half=false) for CPU runtimes")
        device = torch.device("cuda")
    graph, meta, outputs = (_anomaly_graph if anomaly else _detector_graph)(ckpt, options)
    size = int(meta["imgsz"])
    dummy = torch.rand(2 if options.dynamic else 1, 3, size, size, device=device)
    graph = graph.to(device).eval()
    if options.half:
        graph, dummy = graph.half(), dummy.half()
    out = Path(options.out).expanduser() if options.out else ckpt.with_name(
        ckpt.stem + ("-nms" if options.nms else "") + ("-fp16" if options.half else "") + ".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = None
    if options.dynamic:
        dynamic_axes = {"images": {0: "batch"}}
        dynamic_axes.update({name: {0: "detections" if name == "detections" else "batch"} for name in outputs})
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # shape checks in the models become constants of the trace: right for the traced (trained) image size
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")  # indices >= 0
        torch.onnx.export(graph, (dummy,), str(tmp), dynamo=False, opset_version=int(options.opset),
                          input_names=["images"], output_names=list(outputs), dynamic_axes=dynamic_axes)
    model = onnx.load(str(tmp))
    meta.update(opset=int(options.opset), dynamic=options.dynamic, half=options.half, source=str(ckpt.resolve()),
                inputs={"images": [("batch" if options.dynamic else dummy.shape[0]), 3, size, size]},
                outputs=list(outputs))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    check = "" if options.half else _self_check(tmp, graph, size, options.dynamic, out,
                                                unordered=bool(meta.get("nms_free")) and not options.nms)
    tmp.replace(out)
    print(f"exported {ckpt} -> {out} ({meta['task']}, {size} px, opset {options.opset}, "
          f"{'dynamic batch' if options.dynamic else 'batch 1'}{', NMS in the graph' if options.nms else ''}"
          f"{', fp16' if options.half else ''}; outputs {', '.join(outputs)}{check})", flush=True)
    return out


def _self_check(path: Path, graph: Any, size: int, dynamic: bool, out: Path, unordered: bool = False) -> str:
    """Run the written graph in onnxruntime on a random batch (3 images when ``dynamic``: another size than the
    traced one) against PyTorch; a graph that cannot take the batch is refused, the largest difference reported."""
    import numpy as np
    import onnxruntime as ort
    import torch

    images = torch.rand(3 if dynamic else 1, 3, size, size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        got = session.run(None, {"images": images.numpy()})
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types
        path.unlink(missing_ok=True)
        raise ValueError(f"the exported graph cannot run a batch of {images.shape[0]} ({str(err).splitlines()[0][:200]}); "
                         + ("this model traces its batch size into the graph (e.g. the wavelet transform of bsdrd): "
                            "export with dynamic=false" if dynamic else "please report it")) from None
    with torch.no_grad():
        expected = graph.cpu()(images)
    expected = [expected] if torch.is_tensor(expected) else list(expected)
    if any(g.shape != tuple(e.shape) for g, e in zip(got, expected, strict=True)):
        return "; onnxruntime check: output sizes differ from PyTorch's (NMS ties), compare with predict.py"
    if unordered:  # set prediction: queries of near-equal score may swap places; compare each to its nearest
        rows, ref = (torch.cat([torch.as_tensor(o[0] if k == 0 else o[1]).float() for k in (0, 1)], -1)
                     for o in (got, [e.numpy() for e in expected]))
        worst = max(float(torch.cdist(rows, ref).min(-1).values.max()), float(torch.cdist(ref, rows).min(-1).values.max()))
        return f"; onnxruntime vs PyTorch on {images.shape[0]} random image(s): max |diff| {worst:.1e} (queries unordered)"
    worst = max(float(np.abs(g - e.numpy()).max()) if g.size else 0.0 for g, e in zip(got, expected, strict=True))
    return f"; onnxruntime vs PyTorch on {images.shape[0]} random image(s): max |diff| {worst:.1e}"


def _detector_graph(ckpt: Path, options: ExportOptions) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    from fgkd.export.graphs import DETECTION_COLUMNS, DeployedDetector
    from fgkd.tasks.detect import load_detector

    detector, info = load_detector(ckpt, map_location="cpu")
    detector.eval()
    if hasattr(detector, "fuse"):
        detector.fuse()  # Conv+BN folding (and RepVGG re-parameterisation): the same eval outputs, fewer ops
    nms_free = bool(getattr(detector, "nms_free", False))
    if nms_free and options.nms:
        raise ValueError(f"{(info.get('detector') or {}).get('name')} is NMS-free (one prediction per query): export "
                         "without nms=true; predict.py selects its top queries")
    size = int(options.imgsz or info.get("imgsz") or 640)
    graph = DeployedDetector(detector, nms=options.nms, conf=options.conf, iou=options.iou, max_det=options.max_det)
    meta = {"task": "detect", "model": (info.get("detector") or {}).get("name"),
            "class_names": list(info.get("class_names") or []), "imgsz": size, "trained_imgsz": info.get("imgsz"),
            "input": "RGB in [0, 1], letterboxed (long side to imgsz, padded with 114 gray)", "nms_free": nms_free,
            "nms": {"conf": options.conf, "iou": options.iou, "max_det_per_class": options.max_det,
                    "columns": list(DETECTION_COLUMNS)} if options.nms else None}
    return graph, meta, ("detections",) if options.nms else ("boxes", "scores")


def _anomaly_graph(ckpt: Path, options: ExportOptions) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    from fgkd.data.anomaly_datamodule import IMAGENET_MEAN, IMAGENET_STD
    from fgkd.export.graphs import DeployedAnomalyModel
    from fgkd.tasks.anomaly import load_anomaly_model

    model, info = load_anomaly_model(ckpt)
    size = int(options.imgsz or info.get("imgsz") or 256)
    meta = {"task": "anomaly", "model": (info.get("model") or {}).get("name") if isinstance(info.get("model"), dict)
            else info.get("model"), "imgsz": size, "resize_mode": str((info.get("data") or {}).get("resize_mode", "square")),
            "input": "RGB in [0, 1] resized as resize_mode says, then (x - mean) / std",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "threshold": info.get("threshold"),
            "pixel_threshold": info.get("pixel_threshold")}
    return DeployedAnomalyModel(model.eval()), meta, ("anomaly_map", "score")
