"""Can the loader feed the training step? Prints ``loader_over_step=<float>`` (warm epochs) last.

    python benchmarks/loader.py [--images 48] [--src-size 1920x1080] [--imgsz 320] [--batch 8] [--workers 2]
        [--epochs 3] [--model yolov8n] [--preprocess rb_sf] [--threads N] [--root DATASET]

* data: ``--images`` JPEG photographs of ``--src-size`` (default 1920×1080, quality 95) with a pipe mask PNG and
  YOLO boxes each, written to a temporary folder in the YOLO-with-masks layout (or ``--root``: your own
  dataset, README "Data"); loaded through the real path: ``python train.py data=yolo`` composed with Hydra,
  ``DetectTask.build_datamodule`` for a FAKD student fit (paired views: X, X_M from ``--preprocess``, masks,
  boxes; the recipe's augmentation, mosaic included), ``num_workers=--workers``, decode cache on;
* cold: the decode cache is built (``setup``: every source decoded and resized once) and the first epoch read;
  warm: later epochs, which read the cached entries;
* the training step it has to feed: a FAKD step of ``--model`` (``benchmarks/_common.py``: compute_loss with the
  frozen teacher, backward, optimizer step) on one of these batches, median of a few steps, measured after
  the loader (not concurrently, so neither slows the other);
* ``loader_over_step`` = step time / time the loader takes per batch: how many batches the loader makes while
  one step runs (target >= 3 at ``--workers 2``, issue 12).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

TARGET = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="synthetic source images (train split)")
    parser.add_argument("--src-size", default="1920x1080", help="WIDTHxHEIGHT of the synthetic JPEGs")
    parser.add_argument("--root", default=None, help="a YOLO-with-masks dataset instead of the synthetic one")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    parser.add_argument("--epochs", type=int, default=3, help="epochs read (the first is cold)")
    parser.add_argument("--model", default="yolov8n", help="the detector whose FAKD step is fed")
    parser.add_argument("--preprocess", default="rb_sf", help="the teacher view X_M (conf/preprocess)")
    parser.add_argument("--steps", type=int, default=5, help="measured training steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of the training step")
    parser.add_argument("--device", default="cpu", help="where the training step runs: cpu | cuda | auto")
    args = parser.parse_args(argv)
    try:
        args.width, args.height = (int(v) for v in args.src_size.lower().split("x"))
    except ValueError:
        parser.error(f"--src-size {args.src_size!r}: give WIDTHxHEIGHT, e.g. 1920x1080")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (one cold, at least one warm)")
    return args


def write_dataset(root: Path, count: int, width: int, height: int, seed: int = 0) -> Path:
    """``count`` train and ``max(2, count // 8)`` val photographs: textured background, a pipe (the mask)
    across the frame, 2-4 damage boxes on it; YOLO labels, 0/255 mask PNGs, data.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", max(2, count // 8))):
        for folder in ("images", "labels", "masks"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            low = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
            image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
            image = cv2.add(image, rng.integers(0, 40, image.shape, dtype=np.uint8))  # sensor-like noise
            mask = np.zeros((height, width), np.uint8)
            y = int(rng.uniform(0.3, 0.7) * height)
            thickness = int(rng.uniform(0.15, 0.3) * height)
            cv2.line(mask, (0, y), (width, y + int(rng.uniform(-0.2, 0.2) * height)), 255, thickness)
            image[mask > 0] = (0.6 * image[mask > 0] + 0.4 * np.array([90, 110, 130])).astype(np.uint8)
            lines = []
            ys, xs = np.nonzero(mask)
            for _ in range(int(rng.integers(2, 5))):
                k = int(rng.integers(len(xs)))
                bw, bh = rng.uniform(0.04, 0.15) * width, rng.uniform(0.04, 0.15) * height
                cx, cy = float(xs[k]), float(ys[k])
                cv2.rectangle(image, (int(cx - bw / 2), int(cy - bh / 2)), (int(cx + bw / 2), int(cy + bh / 2)),
                              (30, 30, 200), 4)
                x1, y1 = max(cx - bw / 2, 0), max(cy - bh / 2, 0)
                x2, y2 = min(cx + bw / 2, width), min(cy + bh / 2, height)
                lines.append(f"{int(rng.integers(3))} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                             f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
            stem = f"{split}_{i:04d}"
            cv2.imwrite(str(root / "images" / split / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / "masks" / split / f"{stem}.png"), mask)
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("names: [crack, hole, deposit]\ntrain: images/train\nval: images/val\n")
    return root


def build_datamodule(args: argparse.Namespace, root: Path, cache_dir: Path):
    """``python train.py data=yolo data.root=ROOT ...``'s datamodule for a FAKD student fit."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fgkd.tasks.detect import DetectTask

    overrides = ["data=yolo", f"data.root={root}", f"imgsz={args.imgsz}", f"batch_size={args.batch}",
                 f"num_workers={args.workers}", f"preprocess={args.preprocess}", "kd=cs", f"model={args.model}",
                 f"paths.cache_dir={cache_dir}", "data.pin_memory=false"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(_common.CONF_DIR), version_base="1.3", job_name="benchmark"):
        cfg = compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    datamodule = DetectTask().build_datamodule(cfg, "student")
    datamodule.progress = False
    datamodule.report = False
    return datamodule


def read_epoch(loader) -> tuple[float, int, dict]:
    """Seconds to read every batch of one epoch, the batch count and the last batch."""
    start = time.perf_counter()
    count, last = 0, None
    for item in loader:
        count, last = count + 1, item
    return time.perf_counter() - start, count, last


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fgkd_loader_") as tmp:
        tmp = Path(tmp)
        if args.root:
            root = Path(args.root)
        else:
            started = time.perf_counter()
            root = write_dataset(tmp / "data", args.images, args.width, args.height)
            print(f"wrote {args.images} {args.width}x{args.height} JPEGs + masks in {time.perf_counter() - started:.1f} s")
        datamodule = build_datamodule(args, root, tmp / "cache")
        started = time.perf_counter()
        datamodule.setup("fit")
        setup_seconds = time.perf_counter() - started
        loader = datamodule.train_dataloader()
        epochs = []
        batch = None
        for epoch in range(args.epochs):
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            seconds, count, batch = read_epoch(loader)
            epochs.append((seconds, count))
            print(f"  epoch {epoch + 1}/{args.epochs}: {count} batches in {seconds:.2f} s "
                  f"({seconds / count * 1e3:.0f} ms/batch){' (cold)' if epoch == 0 else ''}", flush=True)
        del loader
        assert batch is not None and "teacher_images" in batch and "masks" in batch, "no paired-view batches"

        device = _common.resolve_device(args.device)
        module = _common.build_module(args.model, datamodule.num_classes, device, kd="cs")
        optimizer, _ = _common.build_optimizer(module, args.batch, datamodule.num_classes)
        step = _common.TrainStep(module, optimizer, device, amp=False)
        if batch["images"].shape[0] != args.batch:  # the epoch's last, partial batch: time a full one
            batch = next(iter(datamodule.train_dataloader()))
        full = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        step.run(full)
        step_seconds = statistics.median(step.timed(full) for _ in range(args.steps))

    cold_batch = (setup_seconds + epochs[0][0]) / epochs[0][1]
    warm_batch = sum(s for s, _ in epochs[1:]) / sum(c for _, c in epochs[1:])
    print(f"loader: {args.images if not args.root else root} sources {args.width}x{args.height} -> imgsz {args.imgsz}, "
          f"batch {args.batch}, num_workers {args.workers}, preprocess {args.preprocess} (X, X_M, masks, boxes), "
          f"decode cache on; FAKD step of {args.model} on {_common.device_label(device)}")
    rows = [
        ["cold (cache build + epoch 1)", f"{setup_seconds:.2f} + {epochs[0][0]:.2f} s", f"{cold_batch * 1e3:.0f}",
         f"{step_seconds / cold_batch:.2f}"],
        ["warm (epochs 2+)", f"{sum(s for s, _ in epochs[1:]):.2f} s", f"{warm_batch * 1e3:.0f}",
         f"{step_seconds / warm_batch:.2f}"],
    ]
    _common.print_table(rows, ["epochs", "time", "ms per batch", "batches per training step"])
    print(f"training step {step_seconds * 1e3:.0f} ms; target loader_over_step >= {TARGET}")
    print(f"loader_over_step_cold={step_seconds / cold_batch:.3f}")
    ratio = step_seconds / warm_batch
    print(f"loader_over_step={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
