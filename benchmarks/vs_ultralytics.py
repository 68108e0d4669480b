"""fgkd's training step against Ultralytics' for the same YOLOv8 model: prints ``fgkd_over_ultralytics=<float>`` last.

    python benchmarks/vs_ultralytics.py --model yolov8n --imgsz 320 --batch 8 --threads 1 [--steps 10] [--warmup 2]

``ultralytics`` is never a project dependency: install it in an environment of its own next to fgkd's
requirements (``pip install -r requirements.txt ultralytics==8.2.0``) and run this script there. Without it the
script says so and exits 0.

* both models are built from scratch at ``--nc`` classes with the same seed: fgkd's from ``conf/model/<model>.yaml``
  (``fgkd.tasks.detect.build_student``), Ultralytics' ``DetectionModel("<model>.yaml")``; the parameter counts
  are printed side by side (they are equal: the architectures match exactly);
* one synthetic batch (benchmarks/_common.py) is given to both: fgkd gets the contract format (pixel xyxy
  boxes), Ultralytics its own (``img``, ``batch_idx``, ``cls``, normalised ``bboxes`` in xywh) for the same boxes;
* a step is what each trainer does per batch in fp32: forward, task loss (fgkd ``DetectionModule.compute_loss``;
  Ultralytics ``model.loss(batch)``, i.e. ``v8DetectionLoss``), backward, optimizer step, zero_grad, with each
  trainer's own AdamW parameter groups at the same learning rate. ``--with-extras`` adds each trainer's
  per-step extras to its step: both clip gradients (max-norm 10; fgkd's ``trainer.gradient_clip_val``) and
  update their EMA on every step;
* fgkd runs with its training defaults (``conf/train.yaml``: ``channels_last`` on, ``compile`` off; change them
  with ``--no-channels-last`` / ``--compile``), Ultralytics with its own (NCHW, eager);
* the two steps alternate in one process (ABBA order) with the same CPU threads, so load and drift hit both;
  ``fgkd_over_ultralytics`` = median fgkd step / median Ultralytics step (target <= 0.9, issue 12).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "True")  # Ultralytics: no update checks, no downloads

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

TARGET = 0.9
INSTALL = (
    "vs_ultralytics: the 'ultralytics' package is not importable here, so there is nothing to compare with.\n"
    "  It is not an fgkd dependency; to measure, make a separate environment:\n"
    "    python -m venv /tmp/ulvenv && /tmp/ulvenv/bin/pip install -r requirements.txt ultralytics==8.2.0\n"
    "    PYTHONPATH=src /tmp/ulvenv/bin/python benchmarks/vs_ultralytics.py --model yolov8n --threads 1"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov8n", choices=("yolov8n", "yolov8s", "yolov8m", "yolov8l"))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per trainer first")
    parser.add_argument("--nc", type=int, default=3, help="number of classes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (fp32 either way)")
    parser.add_argument("--with-extras", action="store_true",
                        help="add each trainer's per-step extras: Ultralytics clip + EMA, fgkd EMA")
    _common.add_speed_arguments(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    args.amp = "off"
    return args


def ultralytics_batch(batch: dict, imgsz: int) -> dict:
    """The same images and boxes in Ultralytics' training-batch format."""
    targets = batch["targets"]
    x1, y1, x2, y2 = targets[:, 2:].unbind(1)
    xywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1) / imgsz
    return {"img": batch["images"], "batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": xywh}


class UltralyticsStep:
    """Ultralytics 8.x's per-batch training work (``BaseTrainer._do_train`` + ``optimizer_step``) in fp32."""

    def __init__(self, model_name: str, nc: int, lr: float, momentum: float, decay: float, extras: bool, device):
        from ultralytics.cfg import get_cfg
        from ultralytics.engine.trainer import BaseTrainer
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils.torch_utils import ModelEMA

        torch.manual_seed(0)
        self.model = DetectionModel(f"{model_name}.yaml", nc=nc, verbose=False).to(device)
        self.model.args = get_cfg()  # the loss gains (box 7.5, cls 0.5, dfl 1.5), as the trainer sets them
        self.model.train()
        # BaseTrainer.build_optimizer reads nothing from self for an explicit optimizer name
        self.optimizer = BaseTrainer.build_optimizer(None, self.model, "AdamW", lr, momentum, decay)
        self.ema = ModelEMA(self.model) if extras else None
        self.extras = extras
        self.device = device

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def run(self, batch: dict) -> torch.Tensor:
        loss, _ = self.model.loss(batch)
        loss.backward()
        if self.extras:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()

    def timed(self, batch: dict) -> float:
        _common.synchronize(self.device)
        start = time.perf_counter()
        self.run(batch)
        _common.synchronize(self.device)
        return time.perf_counter() - start


class FgkdStep(_common.TrainStep):
    """fgkd's step (benchmarks/_common.TrainStep) plus, with extras, the gradient clipping and EMA update the
    Lightning fit runs."""

    def __init__(self, module, optimizer, device, extras: bool) -> None:
        super().__init__(module, optimizer, device, amp=False)
        self.ema = None
        if extras:
            from torch.optim.swa_utils import AveragedModel

            from fgkd.lit.callbacks import RampEMA

            self.ema = AveragedModel(module, avg_fn=RampEMA(0.9999, 2000), use_buffers=True)

    def run(self, batch: dict) -> torch.Tensor:
        if self.ema is None:
            return super().run(batch)
        with self.autocast():
            total, _ = self.module.compute_loss(batch)
        total.backward()
        # trainer/default.yaml gradient_clip_val: 10.0 (norm), as Ultralytics' optimizer_step clips
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm=10.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = total.detach()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        return loss


def main(argv: list[str] | None = None) -> float | None:
    args = parse_args(argv)
    if importlib.util.find_spec("ultralytics") is None:
        print(INSTALL)
        return None
    import ultralytics

    device, _, batch = _common.setup(args)
    if device.type != "cpu" and args.threads:
        print("note: --threads only affects CPU work")
    module = _common.build_module(args.model, args.nc, device, channels_last=args.channels_last, compile=args.compile)
    optimizer, resolved = _common.build_optimizer(module, args.batch, args.nc)
    group_decay = max(g["weight_decay"] for g in optimizer.param_groups)
    fgkd = FgkdStep(module, optimizer, device, args.with_extras)
    ul = UltralyticsStep(args.model, args.nc, resolved.lr, resolved.momentum, group_decay, args.with_extras, device)
    if args.threads:  # Ultralytics' import may touch thread settings; both run under the same ones
        torch.set_num_threads(args.threads)
    ul_batch = ultralytics_batch(batch, args.imgsz)
    fgkd_params = sum(p.numel() for p in module.student.parameters() if p.requires_grad)

    times = _common.alternate({"fgkd": lambda: fgkd.timed(batch), "ultralytics": lambda: ul.timed(ul_batch)},
                              args.warmup, args.steps, verbose=True)
    stats = {name: _common.summary(values) for name, values in times.items()}
    ratio, paired = _common.ratios(times, "fgkd", "ultralytics")
    print(
        f"vs_ultralytics: model={args.model} imgsz={args.imgsz} batch={args.batch} nc={args.nc} "
        f"device={_common.device_label(device)} fp32 optimizer=AdamW(lr={resolved.lr:g}) "
        f"extras={'on' if args.with_extras else 'off'} fgkd_channels_last={args.channels_last} compile={args.compile} ultralytics=={ultralytics.__version__} torch=={torch.__version__} "
        f"steps={args.steps} (+{args.warmup} warm-up) each, alternating"
    )
    rows = [
        ["fgkd", f"{fgkd_params:,}", *(f"{stats['fgkd'][k] * 1e3:.1f}" for k in ("median", "p10", "p90"))],
        ["ultralytics", f"{ul.parameters():,}", *(f"{stats['ultralytics'][k] * 1e3:.1f}" for k in ("median", "p10", "p90"))],
    ]
    _common.print_table(rows, ["trainer", "parameters", "median ms", "p10 ms", "p90 ms"])
    print(f"median of paired ratios fgkd/ultralytics: {paired:.3f}; target fgkd_over_ultralytics <= {TARGET}")
    print(f"fgkd_over_ultralytics={ratio:.4f}")
    return ratio


if __name__ == "__main__":
    main()
