"""How much a FAKD training step costs over a base training step: prints ``kd_over_base=<float>`` last.

    python benchmarks/kd_overhead.py --model yolov6n --imgsz 320 --batch 8 [--steps 20] [--warmup 3]
        [--kd cs] [--device auto] [--threads N] [--unfused-teacher] [--breakdown] [--profile]

* base step: student forward + task loss + backward + optimizer step (a ``kd=none`` DetectionModule);
* KD step: the same + the frozen teacher's ``no_grad`` forward on X_M + feature taps + the KD loss (a
  ``kd=<name>`` DetectionModule with a teacher of the same architecture, alpha 0.5), as ``train.py`` runs it:
  the teacher fused (``kd.fuse_teacher: true``: BN folded into convs, RepVGG branches re-parameterised; same
  eval outputs) and its forward ending at the last tapped map (feature KD needs no neck or head);
* both go through the real ``DetectionModule.compute_loss`` with the recipe's optimizer (benchmarks/_common.py)
  and are timed *alternately* in one process (ABBA order), so machine load and clock drift hit both alike;
* reported: median (and p10/p90) ms per step; ``kd_over_base`` = median KD step / median base step. The
  median of the per-pair ratios is printed too (robust to slow drift). Target <= 1.25 (issue 12).
* ``--unfused-teacher`` adds a third alternated mode whose teacher is not fused (``kd.fuse_teacher=false``),
  to measure what fusing saves;
* ``--breakdown`` times the pieces of the KD step; ``--profile`` prints torch.profiler's top operators.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

TARGET = 1.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov6n", help="a conf/model/*.yaml name (student and teacher)")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps per mode first")
    parser.add_argument("--kd", default="cs", help="KD loss (conf/kd): cs mse mmd cwd kl")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--nc", type=int, default=3, help="number of classes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="fp16 autocast (auto: on CUDA)")
    parser.add_argument(
        "--unfused-teacher", action="store_true",
        help="also time a third mode whose frozen teacher is not fused (kd.fuse_teacher=false)",
    )
    parser.add_argument("--breakdown", action="store_true", help="also time the pieces of the KD step")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    _common.add_speed_arguments(parser)
    args = parser.parse_args(argv)
    if args.kd == "none":
        parser.error("--kd none has no KD step to compare; choose cs, mse, mmd, cwd or kl")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    device, amp, batch = _common.setup(args)

    modes = [("base", "none", True), ("kd", args.kd, True)]
    modes += [("kd_unfused", args.kd, False)] if args.unfused_teacher else []
    steps = {}
    for mode, kd, fuse in modes:
        module = _common.build_module(args.model, args.nc, device, kd=kd, alpha=args.alpha, fuse_teacher=fuse,
                                      channels_last=args.channels_last, compile=args.compile)
        optimizer, resolved = _common.build_optimizer(module, args.batch, args.nc)
        steps[mode] = _common.TrainStep(module, optimizer, device, amp)
    assert steps["kd"].module.distills and not steps["base"].module.distills

    times = _common.alternate({mode: (lambda step=step: step.timed(batch)) for mode, step in steps.items()},
                              args.warmup, args.steps)
    stats = {mode: _common.summary(values) for mode, values in times.items()}
    ratio, paired = _common.ratios(times, "kd", "base")

    print(
        f"kd_overhead: model={args.model} imgsz={args.imgsz} batch={args.batch} kd={args.kd} alpha={args.alpha} "
        f"device={_common.device_label(device)} amp={amp} optimizer={resolved.name} channels_last={args.channels_last} "
        f"steps={args.steps} (+{args.warmup} warm-up) per mode, alternating"
    )
    rows = [
        [mode, f"{s['median'] * 1e3:.1f}", f"{s['p10'] * 1e3:.1f}", f"{s['p90'] * 1e3:.1f}",
         f"{args.batch / s['median']:.1f}"]
        for mode, s in stats.items()
    ]
    _common.print_table(rows, ["step", "median ms", "p10 ms", "p90 ms", "images/s"])
    print(f"median of paired ratios kd/base: {paired:.3f}; target kd_over_base <= {TARGET}")
    if "kd_unfused" in stats:
        unfused, unfused_paired = _common.ratios(times, "kd_unfused", "base")
        print(f"kd_unfused_over_base={unfused:.4f} (median of paired ratios {unfused_paired:.3f})")

    if args.breakdown:
        print("\nKD step, piece by piece (median over steps):")
        means, step_seconds = _common.piece_breakdown(steps["kd"], batch, max(5, args.steps // 2))
        _common.print_breakdown(means, step_seconds)
    if args.profile:
        print("\nKD step, torch.profiler top operators:")
        _common.profile_top_ops(steps["kd"], batch, max(2, args.steps // 8))

    print(f"kd_over_base={ratio:.4f}")
    return ratio


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
