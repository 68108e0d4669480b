"""Anomaly-map inference and training-step time of a reverse-distillation model: prints ``infer_ms_per_image`` last.

    python benchmarks/ad_infer.py --model rd --imgsz 256 --batch 8 [--steps 10] [--warmup 2] [--device auto]
        [--set encoder.name=resnet18 ...]

Inference = encoder(s) + bottleneck + decoder + per-scale 1 − cos maps + upsampling + the σ 4 Gaussian blur
(``ReverseDistillation.predict``), in eval mode under ``torch.no_grad``; the blur alone is timed too, separable
(what fgkd runs) against the equivalent single 33×33 conv. The training step is forward + loss + backward +
Adam step. The model is ``conf/model/<model>.yaml`` with random encoder weights (the timing does not depend on
them); ``--set key=value`` changes a model option. Median over ``--steps`` after ``--warmup``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rd", help="rd | rd2t (conf/model/*.yaml)")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-train", action="store_true", help="time inference only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a model option, e.g. encoder.name=resnet18 or oce_width_per_group=64")
    return parser.parse_args(argv)


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    times = []
    for index in range(warmup + steps):
        _common.synchronize(device)
        start = time.perf_counter()
        fn()
        _common.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return _common.summary(times)["median"]


def build(args: argparse.Namespace):
    import yaml
    from omegaconf import OmegaConf

    from fgkd.models.registry import build_model
    from fgkd.tasks.anomaly import model_options

    node = OmegaConf.create(_common.model_config(args.model))
    for item in args.set:
        key, _, value = item.partition("=")
        OmegaConf.update(node, key, yaml.safe_load(value), force_add=True)
    cfg = OmegaConf.to_container(node)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(cfg["name"], 1, **model_options(cfg)), cfg


def main(argv: list[str] | None = None) -> float:
    from fgkd.models.anomaly.components.anomaly_map import gaussian_blur, gaussian_kernel1d

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _common.resolve_device(args.device)
    model, cfg = build(args)
    model.to(device)
    images = torch.randn(args.batch, 3, args.imgsz, args.imgsz, device=device)
    trainable = sum(p.numel() for p in model.trainable_parameters()) / 1e6
    print(f"{args.model} ({', '.join(model.describe()['encoders'])}; trainable {trainable:.1f} M) at {args.imgsz} px, "
          f"batch {args.batch}, {_common.device_label(device)}", flush=True)

    rows = []
    if not args.no_train:
        model.train()
        optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.005, betas=(0.5, 0.999))

        def train_step() -> None:
            loss = model.loss(*model(images))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step = timed(train_step, device, args.steps, args.warmup)
        rows.append(["train step", f"{step * 1e3:.1f}", f"{step * 1e3 / args.batch:.1f}"])
        del optimizer
    model.eval()
    infer = timed(lambda: model.predict(images), device, args.steps, args.warmup)
    maps = torch.rand(args.batch, args.imgsz, args.imgsz, device=device)
    separable = timed(lambda: gaussian_blur(maps, model.sigma), device, args.steps, args.warmup)
    kernel1d = gaussian_kernel1d(model.sigma, device=device).float()
    kernel2d = (kernel1d[:, None] * kernel1d[None, :])[None, None]
    pad = kernel1d.numel() // 2
    full = timed(lambda: F.conv2d(F.pad(maps[:, None], (pad,) * 4, mode="reflect"), kernel2d), device,
                 args.steps, args.warmup)
    rows += [["anomaly map (inference)", f"{infer * 1e3:.1f}", f"{infer * 1e3 / args.batch:.2f}"],
             ["  of which: blur, separable", f"{separable * 1e3:.2f}", f"{separable * 1e3 / args.batch:.3f}"],
             ["  (blur as one 33x33 conv)", f"{full * 1e3:.2f}", f"{full * 1e3 / args.batch:.3f}"]]
    _common.print_table(rows, ["what", "ms / batch", "ms / image"])
    print(f"blur speed-up separable vs 2-D: {full / max(separable, 1e-12):.1f}x")
    per_image = infer * 1e3 / args.batch
    print(f"infer_ms_per_image={per_image:.2f}")
    return per_image


if __name__ == "__main__":
    main()
