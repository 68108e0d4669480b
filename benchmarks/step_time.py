"""Time of one full training step (forward, task loss, backward, optimizer step): prints ``step_ms=<float>`` last.

    python benchmarks/step_time.py --model yolov8n --imgsz 320 --batch 8 [--steps 20] [--warmup 3]
        [--device auto] [--kd none] [--breakdown] [--profile]

The step goes through the real ``DetectionModule.compute_loss`` with the recipe's optimizer, on synthetic
contract-format batches (benchmarks/_common.py); on CUDA under fp16 autocast + GradScaler (``precision:
auto``). Prints the median ms per step and images/s; ``--breakdown`` splits the step into forward per
top-level module (backbone, neck, head), the assigner, the rest of the loss, backward and the optimizer step;
``--profile`` prints torch.profiler's top operators. ``--kd cs`` times a FAKD step instead (frozen teacher of
the same architecture).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov8n", help="a conf/model/*.yaml name")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    parser.add_argument("--kd", default="none", help="none (base step) or a KD loss: cs mse mmd cwd kl")
    parser.add_argument("--nc", type=int, default=3, help="number of classes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="fp16 autocast (auto: on CUDA)")
    parser.add_argument("--breakdown", action="store_true", help="also time the pieces of the step")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    _common.add_speed_arguments(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    device, amp, batch = _common.setup(args)
    module = _common.build_module(args.model, args.nc, device, kd=args.kd, channels_last=args.channels_last,
                                  compile=args.compile)
    optimizer, resolved = _common.build_optimizer(module, args.batch, args.nc)
    step = _common.TrainStep(module, optimizer, device, amp)

    times = []
    for index in range(args.warmup + args.steps):
        seconds = step.timed(batch)
        if index >= args.warmup:
            times.append(seconds)
    stats = _common.summary(times)

    print(
        f"step_time: model={args.model} imgsz={args.imgsz} batch={args.batch} kd={args.kd} "
        f"device={_common.device_label(device)} amp={amp} optimizer={resolved.name} "
        f"steps={args.steps} (+{args.warmup} warm-up)"
    )
    _common.print_table(
        [[f"{stats['median'] * 1e3:.1f}", f"{stats['p10'] * 1e3:.1f}", f"{stats['p90'] * 1e3:.1f}",
          f"{args.batch / stats['median']:.1f}"]],
        ["median ms", "p10 ms", "p90 ms", "images/s"],
    )
    if args.breakdown:
        print("\nPiece by piece (median over steps):")
        means, step_seconds = _common.piece_breakdown(step, batch, max(5, args.steps // 2))
        _common.print_breakdown(means, step_seconds)
    if args.profile:
        print("\ntorch.profiler top operators:")
        _common.profile_top_ops(step, batch, max(2, args.steps // 8))
    print(f"step_ms={stats['median'] * 1e3:.3f}")
    return stats["median"] * 1e3


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
