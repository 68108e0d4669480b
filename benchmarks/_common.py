"""Shared pieces of the benchmark scripts (kd_overhead.py, step_time.py).

* the model and its recipe come from the real Hydra configs (``conf/model/<name>.yaml``), the student from
  ``fgkd.tasks.detect.build_student`` and the optimizer from the recipe (``fgkd.lit.optim``), as ``train.py``
  would build them;
* a training step goes through the real ``DetectionModule.compute_loss`` (constructed without a Trainer:
  ``current_epoch`` then reads 0), then backward and the optimizer step; on CUDA under fp16 autocast with a
  GradScaler, as Lightning's ``16-mixed`` (``precision: auto``) does;
* batches are synthetic, in the contract format (CONTRACT.md "Batch"): random images and masks, a few boxes
  per image, ``teacher_images`` a masked copy (the teacher's view costs the same whatever its content);
* timings synchronise the device around each measured piece and report medians.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


# -- device ---------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


# -- model, data, optimizer -----------------------------------------------------------------------------
def model_config(model: str) -> dict[str, Any]:
    """``conf/model/<model>.yaml`` composed (recipe included) as a plain dict."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if not (CONF_DIR / "model" / f"{model}.yaml").is_file():
        choices = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise SystemExit(f"--model {model}: no conf/model/{model}.yaml; choose one of {', '.join(choices)}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="benchmark"):
        cfg = compose(config_name="train", overrides=[f"model={model}"])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.model, resolve=True)


def synthetic_batch(
    batch: int, imgsz: int, num_classes: int, device: torch.device, boxes_per_image: int = 4, seed: int = 0
) -> dict[str, Any]:
    """A detection batch in the contract format with ``boxes_per_image`` boxes of 5-40 % of the side."""
    if imgsz % 32:
        raise SystemExit(f"--imgsz {imgsz}: must be a multiple of 32")
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    masks = torch.rand(batch, 1, imgsz // 8, imgsz // 8, generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3) > 0.5
    rows = []
    for b in range(batch):
        for _ in range(boxes_per_image):
            w, h = ((torch.rand(2, generator=g) * 0.35 + 0.05) * imgsz).tolist()
            x1 = float(torch.rand(1, generator=g)) * (imgsz - w)
            y1 = float(torch.rand(1, generator=g)) * (imgsz - h)
            rows.append([b, int(torch.randint(num_classes, (1,), generator=g)), x1, y1, x1 + w, y1 + h])
    return {
        "images": images.to(device),
        "masks": masks.to(device),
        "teacher_images": torch.where(masks, images, torch.full_like(images, 114 / 255)).to(device),
        "targets": torch.tensor(rows, dtype=torch.float32, device=device),
        "paths": [f"synthetic_{i}.jpg" for i in range(batch)],
        "orig_shapes": [(imgsz, imgsz)] * batch,
        "letterbox": [(1.0, 0.0, 0.0)] * batch,
    }


def build_module(
    model: str, num_classes: int, device: torch.device, *, kd: str = "none", alpha: float = 0.5, seed: int = 0,
    channels_last: bool = True, compile: Any = False, fuse_teacher: bool = True,
):
    """A DetectionModule as ``fgkd.tasks.detect`` builds it; with ``kd != none`` a frozen teacher of the same
    architecture (random weights: its cost does not depend on them). The speed options as ``engine.fit`` applies
    them (``conf/train.yaml``: channels_last on, compile off)."""
    from fgkd.lit.detection import DetectionModule
    from fgkd.lit.speed import apply_speed_options
    from fgkd.tasks.detect import build_student

    cfg = model_config(model)
    torch.manual_seed(seed)
    student, spec = build_student(cfg, num_classes)
    teacher = build_student({**cfg, "weights": None}, num_classes)[0] if kd != "none" else None
    module = DetectionModule(
        student,
        detector_spec=spec,
        recipe=cfg.get("recipe"),
        teacher=teacher,
        kd=kd,
        alpha=alpha if kd != "none" else 0.0,
        fuse_teacher=fuse_teacher,  # conf/kd/_base.yaml fuse_teacher: true
    )
    module.to(device)
    module.student.train()
    notes = apply_speed_options(module, channels_last=channels_last, compile=compile, device_type=device.type)
    if compile:
        print(f"{model}: {', '.join(notes)}")
    return module


def add_speed_arguments(parser: Any) -> None:
    """``--no-channels-last`` and ``--compile [MODE]``: the ``channels_last`` / ``compile`` keys of train.yaml."""
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="NCHW convolutions (train.py channels_last=false)")
    parser.add_argument("--compile", nargs="?", const=True, default=False,
                        help="torch.compile the trained network (train.py compile=true|MODE); the warm-up steps "
                             "include the compilation")


def build_optimizer(module, batch: int, num_classes: int, dataset_size: int = 400, epochs: int = 100):
    """The recipe's optimizer (three parameter groups) as ``configure_optimizers`` resolves it."""
    from fgkd.lit.optim import accumulate_steps, resolve_optimizer
    from fgkd.lit.optim import build_optimizer as build_groups

    recipe = module.recipe
    resolved = resolve_optimizer(
        recipe,
        num_classes=num_classes,
        batch_size=batch,
        accumulate=accumulate_steps(batch, recipe.nbs),
        epochs=epochs,
        dataset_size=dataset_size,
    )
    nesterov = bool(recipe.nesterov) and resolved.name == "sgd"
    return build_groups([module], resolved, nesterov=nesterov), resolved


# -- one training step ----------------------------------------------------------------------------------
@dataclass
class TrainStep:
    """One optimisation step of ``module`` (compute_loss, backward, optimizer step), timed on ``device``."""

    module: Any
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: bool
    scaler: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.amp:
            self.scaler = torch.amp.GradScaler(self.device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def run(self, batch: dict[str, Any]) -> torch.Tensor:
        with self.autocast():
            total, _ = self.module.compute_loss(batch)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total.detach()

    def timed(self, batch: dict[str, Any]) -> float:
        """Seconds for one step (device synchronised before and after)."""
        synchronize(self.device)
        start = time.perf_counter()
        self.run(batch)
        synchronize(self.device)
        return time.perf_counter() - start


def alternate(runs: dict[str, Callable[[], float]], warmup: int, steps: int, verbose: bool = False) -> dict[str, list[float]]:
    """Seconds of each measured call of every ``runs[name]()``, the runs alternating in ABBA order (no run
    always goes first, so machine load and clock drift hit all alike); the first ``warmup`` rounds are dropped."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(warmup + steps):
        order = list(runs) if index % 2 == 0 else list(runs)[::-1]
        for name in order:
            seconds = runs[name]()
            if index >= warmup:
                times[name].append(seconds)
        if verbose and index >= warmup:
            print(f"  step {index + 1}/{warmup + steps}: "
                  + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" for n in runs), flush=True)
    return times


def ratios(times: dict[str, list[float]], over: str, under: str) -> tuple[float, float]:
    """``(median over / median under, median of the paired per-round ratios)``."""
    paired = statistics.median(a / b for a, b in zip(times[over], times[under], strict=True))
    return statistics.median(times[over]) / statistics.median(times[under]), paired


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median": statistics.median(ordered),
        "p10": ordered[int(0.1 * (len(ordered) - 1))],
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "min": ordered[0],
    }


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))


# -- where a step spends its time -----------------------------------------------------------------------
class PieceTimer:
    """Accumulates device-synchronised wall time per named piece over several steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self.order: list[str] = []

    @contextlib.contextmanager
    def piece(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        if name not in self.totals:
            self.order.append(name)
            self.totals[name] = 0.0
        self.totals[name] += seconds


def _wrap_call(obj: Any, attribute: str, timer: PieceTimer, name: str) -> Callable[[], None]:
    """Replace ``obj.attribute`` (a callable) by a timed version; returns the undo function."""
    original = getattr(obj, attribute)
    had_own = attribute in vars(obj)  # an instance attribute (e.g. the assigner), not a method

    def timed(*args: Any, **kwargs: Any) -> Any:
        with timer.piece(name):
            return original(*args, **kwargs)

    setattr(obj, attribute, timed)

    def restore() -> None:
        if had_own:
            setattr(obj, attribute, original)
        else:
            delattr(obj, attribute)

    return restore


def _hook_children(detector: torch.nn.Module, timer: PieceTimer, prefix: str) -> list[Any]:
    """Forward pre/post hooks timing each top-level child (backbone, neck, head) of a detector."""
    handles = []
    starts: dict[str, float] = {}
    for child_name, child in detector.named_children():
        label = f"{prefix}{child_name}"

        def pre(module: torch.nn.Module, args: Any, label: str = label) -> None:
            synchronize(timer.device)
            starts[label] = time.perf_counter()

        def post(module: torch.nn.Module, args: Any, output: Any, label: str = label) -> None:
            synchronize(timer.device)
            timer.add(label, time.perf_counter() - starts.pop(label))

        handles.append(child.register_forward_pre_hook(pre))
        handles.append(child.register_forward_hook(post))
    return handles


def piece_breakdown(step: TrainStep, batch: dict[str, Any], steps: int) -> tuple[dict[str, float], float]:
    """Median seconds per step of each piece of ``step`` (forward per top-level child of student and teacher,
    assigner, rest of the task loss, KD loss, backward, optimizer step) and the median step time.

    Uses forward hooks and temporary wrappers around the criterion's assigner and the KD loss, so the step
    itself runs unchanged through ``compute_loss`` (the synchronisations add a little overhead on CUDA).
    """
    module = step.module
    timer = PieceTimer(step.device)
    step.run(batch)  # builds the lazily created criterion
    criterion = module.student._criterion["fn"]
    undo: list[Callable[[], None]] = []
    for attribute in ("assigner", "tal", "atss"):
        if hasattr(criterion, attribute):
            undo.append(_wrap_call(criterion, attribute, timer, "loss: assigner"))
    undo.append(_wrap_call(module.student, "loss", timer, "loss: total (incl. assigner)"))
    if module.distills:
        undo.append(_wrap_call(module.kd_loss, "per_tap", timer, f"kd loss ({module.hparams['kd_name']})"))
        undo.append(_wrap_call(module._teacher, "forward", timer, "teacher forward (no_grad, total)"))
    handles = _hook_children(module.student, timer, "student fwd: ")
    if module.distills:
        handles += _hook_children(module.teacher, timer, "teacher fwd: ")
    per_step: list[dict[str, float]] = []
    step_times: list[float] = []
    try:
        for _ in range(steps):
            timer.totals = dict.fromkeys(timer.order, 0.0)
            synchronize(step.device)
            start = time.perf_counter()
            with step.autocast():
                with timer.piece("compute_loss (total)"):
                    total, _ = module.compute_loss(batch)
            with timer.piece("backward"):
                if step.scaler is not None:
                    step.scaler.scale(total).backward()
                else:
                    total.backward()
            with timer.piece("optimizer step + zero_grad"):
                if step.scaler is not None:
                    step.scaler.step(step.optimizer)
                    step.scaler.update()
                else:
                    step.optimizer.step()
                step.optimizer.zero_grad(set_to_none=True)
            synchronize(step.device)
            step_times.append(time.perf_counter() - start)
            per_step.append(dict(timer.totals))
    finally:
        for handle in handles:
            handle.remove()
        for restore in reversed(undo):
            restore()
    if "loss: total (incl. assigner)" in timer.order:
        for values in per_step:
            values["loss: rest (cls/box/dfl)"] = values["loss: total (incl. assigner)"] - values.get("loss: assigner", 0.0)
    # Medians per piece: robust to the bursts of a shared machine (the pieces need not add up exactly).
    medians = {name: statistics.median(values.get(name, 0.0) for values in per_step) for name in per_step[0]}
    return medians, statistics.median(step_times)


def print_breakdown(means: dict[str, float], step_seconds: float) -> None:
    """Pieces sorted by cost; totals that contain other pieces are marked."""
    rows = []
    for name, seconds in sorted(means.items(), key=lambda item: -item[1]):
        rows.append([name, f"{seconds * 1e3:.1f}", f"{100 * seconds / step_seconds:.1f}"])
    print_table(rows, ["piece (per step)", "ms", "% of step"])
    print(f"(step {step_seconds * 1e3:.1f} ms; '(total)' rows contain the rows they name)")


def profile_top_ops(step: TrainStep, batch: dict[str, Any], steps: int, top: int = 12) -> None:
    """torch.profiler over ``steps`` steps: the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if step.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step.run(batch)
        synchronize(step.device)
    sort_by = "self_cuda_time_total" if step.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=top))


def setup(args: Any) -> tuple[torch.device, bool, dict]:
    """What every benchmark does first: CPU threads, device, AMP choice and one synthetic batch."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    return device, amp, synthetic_batch(args.batch, args.imgsz, args.nc, device)
