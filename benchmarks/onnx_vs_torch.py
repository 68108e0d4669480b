"""Inference time of an exported ONNX detector in onnxruntime vs the same (fused) detector in PyTorch.

    python benchmarks/onnx_vs_torch.py [--model yolov8n] [--imgsz 320] [--batch 1] [--steps 30] [--warmup 5]
                                       [--threads 1] [--nms]

The detector is built with random weights (timing does not depend on them), saved as a ``detector.pt``, exported
with ``python -m fgkd.export``'s code path (``fgkd.export.export``: Conv+BN folded, RepVGG re-parameterised), and
both runtimes get the same batch, alternating, for ``--steps`` rounds; medians are reported. PyTorch runs the
fused detector's forward plus the box decoding (what the graph without NMS holds). Last line:
``onnx_over_torch=<ratio>`` (below 1: onnxruntime is faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov8n")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nms", action="store_true", help="NMS in the graph (and PyTorch's postprocess)")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from fgkd.export import ExportOptions, export
    from fgkd.export.graphs import DeployedDetector
    from fgkd.models.detectors.base import build_detector
    from fgkd.tasks.detect import load_detector, save_detector

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_detector(Path(tmp) / "detector.pt", build_detector(args.model, 3), {"name": args.model, "num_classes": 3},
                             ["a", "b", "c"], imgsz=args.imgsz)
        onnx_file = export(ExportOptions(ckpt=str(ckpt), dynamic=True, nms=args.nms))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        detector, _ = load_detector(ckpt)
        graph = DeployedDetector(detector.eval().fuse(), nms=args.nms).eval()
        images = torch.rand(args.batch, 3, args.imgsz, args.imgsz)
        feed = {"images": images.numpy()}
        torch_ms, onnx_ms = [], []
        with torch.no_grad():
            for step in range(args.warmup + args.steps):
                start = time.perf_counter()
                graph(images)
                middle = time.perf_counter()
                session.run(None, feed)
                end = time.perf_counter()
                if step >= args.warmup:
                    torch_ms.append((middle - start) * 1000)
                    onnx_ms.append((end - middle) * 1000)
    t, o = statistics.median(torch_ms), statistics.median(onnx_ms)
    print(f"{args.model} {args.imgsz} px batch {args.batch}, {args.threads} thread(s){', NMS in the graph' if args.nms else ''}: "
          f"PyTorch {t:.1f} ms, onnxruntime {o:.1f} ms (medians of {args.steps}; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__})")
    print(f"onnx_over_torch={o / t:.2f}")


if __name__ == "__main__":
    main()
