"""Fine-tuning recipes: optimizer, parameter groups, warm-up + LR schedule, nominal-batch accumulation.

A recipe is the ``recipe`` block of a model config (``conf/model/recipe/{yolov8,yolov6}.yaml``); the facts
it encodes are in /work/shared/reference/detectors.md §2.3 (YOLOv6 fine-tune) and §3.3 (Ultralytics):

* nominal batch ``nbs`` = 64: ``accumulate = max(1, round(nbs / batch))`` and
  ``weight_decay *= batch * accumulate / nbs``;
* YOLOv6 scales ``lr0 *= batch / lr_reference_batch`` (``--bs_per_gpu`` 32);
* ``optimizer: auto`` (Ultralytics): AdamW with ``lr = round(0.002 * 5 / (4 + nc), 6)`` when
  ``ceil(N / max(batch, nbs)) * epochs <= 10000``, else SGD lr 0.01 momentum 0.9; ``lr: auto`` alone picks
  that AdamW lr (SGD: 0.01);
* three parameter groups: biases (no decay), conv/linear weights (decay), norm-layer weights (no decay);
* per-epoch LR factor ``lf`` (``linear``: ``(1 - x/E)(1 - lrf) + lrf``; ``cosine``:
  ``((1 - cos(pi x / E)) / 2)(lrf - 1) + 1``) with a per-iteration linear warm-up over
  ``max(round(warmup_epochs * iters_per_epoch), warmup_min_iters)`` iterations: biases from
  ``warmup_bias_lr``, other groups from 0, SGD momentum from ``warmup_momentum``.

Written from those facts only (no code from the GPL/AGPL reference repositories).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from fgkd.lit.recipe import SCHEDULES, Recipe, RecipeError

AUTO_ITERATIONS_LIMIT = 10_000


def accumulate_steps(batch_size: int, nbs: int = 64, world_size: int = 1) -> int:
    """Gradient accumulation that makes the effective batch the nominal ``nbs`` (64)."""
    return max(1, round(nbs / (batch_size * world_size)))


def auto_adamw_lr(num_classes: int) -> float:
    """Ultralytics ``optimizer=auto`` AdamW learning rate (nc=1 -> 0.002, nc=3 -> 0.001429)."""
    return round(0.002 * 5 / (4 + num_classes), 6)


@dataclass(frozen=True)
class ResolvedOptimizer:
    """What a recipe becomes for one run (logged as hyper-parameters)."""

    name: str
    lr: float
    momentum: float
    weight_decay: float
    warmup_bias_lr: float


def resolve_optimizer(
    recipe: Recipe,
    *,
    num_classes: int,
    batch_size: int,
    accumulate: int,
    epochs: int,
    dataset_size: int,
    world_size: int = 1,
) -> ResolvedOptimizer:
    name, lr, momentum, warmup_bias_lr = recipe.optimizer, recipe.lr, float(recipe.momentum), float(recipe.warmup_bias_lr)
    total_batch = batch_size * world_size
    if name == "auto":
        iterations = math.ceil(dataset_size / max(total_batch, recipe.nbs)) * epochs
        if iterations <= AUTO_ITERATIONS_LIMIT:
            name, lr, momentum, warmup_bias_lr = "adamw", auto_adamw_lr(num_classes), 0.9, 0.0
        else:
            name, lr, momentum = "sgd", 0.01, 0.9
    if lr == "auto":
        lr = auto_adamw_lr(num_classes) if name in ("adamw", "adam") else 0.01
    lr = float(lr)
    if recipe.lr_reference_batch:
        # YOLOv6 engine: lr0 *= batch / (world * bs_per_gpu), i.e. the per-device batch over 32.
        lr *= batch_size / int(recipe.lr_reference_batch)
    weight_decay = float(recipe.weight_decay) * total_batch * accumulate / recipe.nbs
    return ResolvedOptimizer(name, lr, momentum, weight_decay, warmup_bias_lr)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def split_parameters(modules: Iterable[nn.Module]) -> dict[str, list[nn.Parameter]]:
    """``{"bias": [...], "weight": [...], "norm": [...]}`` over trainable parameters, each parameter once."""
    groups: dict[str, list[nn.Parameter]] = {"bias": [], "weight": [], "norm": []}
    seen: set[int] = set()
    for root in modules:
        for module in root.modules():
            for param_name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                if param_name == "bias":
                    groups["bias"].append(param)
                elif _is_norm(module):
                    groups["norm"].append(param)
                else:
                    groups["weight"].append(param)
    return groups


def build_optimizer(modules: Iterable[nn.Module], resolved: ResolvedOptimizer, nesterov: bool = False,
                    scaled: Iterable[nn.Module] = (), lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Optimizer over three groups; only conv/linear weights get weight decay (biases/norm weights do not).

    ``scaled`` modules (a detector's backbone) get their own three groups at ``lr_scale × lr`` (RT-DETR's
    per-group learning rates); the schedule and warm-up scale every group alike."""
    groups = split_parameters(modules)
    scaled_ids = {id(p) for module in scaled for p in module.parameters()} if lr_scale != 1.0 else set()
    decay = {"bias": 0.0, "weight": resolved.weight_decay, "norm": 0.0}
    param_groups = [{"params": [p for p in params if id(p) not in scaled_ids], "weight_decay": decay[name],
                     "group": name} for name, params in groups.items()]
    if scaled_ids:  # after the unscaled groups, so group 1 (the logged train/lr) stays the conv/linear weights
        param_groups += [{"params": [p for p in params if id(p) in scaled_ids], "weight_decay": decay[name],
                          "group": name, "lr": resolved.lr * lr_scale} for name, params in groups.items()]
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:
        raise ValueError("build_optimizer: no trainable parameters")
    if resolved.name == "sgd":
        return torch.optim.SGD(param_groups, lr=resolved.lr, momentum=resolved.momentum, nesterov=nesterov)
    optimizer_cls = torch.optim.AdamW if resolved.name == "adamw" else torch.optim.Adam
    return optimizer_cls(param_groups, lr=resolved.lr, betas=(resolved.momentum, 0.999))


def lr_factor(schedule: str, lrf: float, epochs: int) -> Callable[[int], float]:
    """Per-epoch LR multiplier ``lf(epoch)``; ``lf(0) == 1``, approaching ``lrf`` at ``epoch == epochs``."""
    epochs = max(int(epochs), 1)
    if schedule == "linear":
        return lambda x: max(1.0 - x / epochs, 0.0) * (1.0 - lrf) + lrf
    if schedule == "cosine":
        return lambda x: ((1.0 - math.cos(x * math.pi / epochs)) / 2.0) * (lrf - 1.0) + 1.0
    if schedule == "constant":
        return lambda x: 1.0
    raise RecipeError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")


def warmup_iterations(warmup_epochs: float, batches_per_epoch: int, min_iters: int) -> int:
    """``max(round(warmup_epochs * batches_per_epoch), min_iters)``; 0 (no warm-up) when warmup_epochs is 0."""
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * batches_per_epoch), int(min_iters))


class WarmupEpochLR(LRScheduler):
    """Per-epoch factor ``lf`` with a per-iteration linear warm-up (stepped once per optimizer step).

    ``last_epoch`` counts optimizer steps; the iteration counts batches like the reference trainers
    (``steps * accumulate`` within an epoch; see :meth:`_position`). During warm-up every group's LR goes linearly
    from its start (``warmup_bias_lr`` for the bias group, 0 for the others) to ``initial_lr * lf(epoch)``,
    and SGD momentum from ``warmup_momentum`` to ``momentum``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lf: Callable[[int], float],
        *,
        batches_per_epoch: int,
        accumulate: int = 1,
        warmup_iters: int = 0,
        warmup_bias_lr: float = 0.0,
        warmup_momentum: float = 0.8,
        momentum: float = 0.937,
        last_epoch: int = -1,
    ) -> None:
        self.lf = lf
        self.batches_per_epoch = max(int(batches_per_epoch), 1)
        self.accumulate = max(int(accumulate), 1)
        self.warmup_iters = int(warmup_iters)
        self.warmup_bias_lr = float(warmup_bias_lr)
        self.warmup_momentum = float(warmup_momentum)
        self.momentum = float(momentum)
        super().__init__(optimizer, last_epoch)

    def _position(self) -> tuple[int, int]:
        """``(iteration in batches, epoch)`` after ``last_epoch`` optimizer steps.

        Lightning also steps on an epoch's last batch when it does not fill an accumulation window, so an
        epoch has ``ceil(batches_per_epoch / accumulate)`` optimizer steps.
        """
        step = max(self.last_epoch, 0)
        steps_per_epoch = math.ceil(self.batches_per_epoch / self.accumulate)
        epoch, step_in_epoch = divmod(step, steps_per_epoch)
        return epoch * self.batches_per_epoch + step_in_epoch * self.accumulate, epoch

    def get_lr(self) -> list[float]:
        iteration, epoch = self._position()
        factor = self.lf(epoch)
        lrs = []
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            target = base_lr * factor
            if iteration < self.warmup_iters:
                start = self.warmup_bias_lr if group.get("group") == "bias" else 0.0
                target = start + (target - start) * iteration / self.warmup_iters
            lrs.append(target)
        return lrs

    def step(self, epoch: int | None = None) -> None:  # noqa: D102 - LRScheduler API
        super().step() if epoch is None else super().step(epoch)
        iteration, _ = self._position()
        if iteration < self.warmup_iters:
            momentum = self.warmup_momentum + (self.momentum - self.warmup_momentum) * iteration / self.warmup_iters
        else:
            momentum = self.momentum
        for group in self.optimizer.param_groups:
            if "momentum" in group:  # SGD only, like the references (Adam's beta1 stays fixed)
                group["momentum"] = momentum

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lf")}


def configure_recipe(
    modules: Iterable[nn.Module],
    recipe: Recipe,
    *,
    num_classes: int,
    batch_size: int,
    accumulate: int,
    epochs: int,
    batches_per_epoch: int,
    dataset_size: int | None = None,
    world_size: int = 1,
    backbone: Iterable[nn.Module] = (),
) -> tuple[torch.optim.Optimizer, WarmupEpochLR, ResolvedOptimizer]:
    """Optimizer + step-wise scheduler for one run (what ``configure_optimizers`` returns)."""
    if dataset_size is None:
        dataset_size = batches_per_epoch * batch_size * world_size
    resolved = resolve_optimizer(
        recipe, num_classes=num_classes, batch_size=batch_size, accumulate=accumulate, epochs=epochs,
        dataset_size=dataset_size, world_size=world_size,
    )
    optimizer = build_optimizer(modules, resolved, nesterov=bool(recipe.nesterov) and resolved.name == "sgd",
                                scaled=backbone, lr_scale=float(recipe.backbone_lr_scale))
    scheduler = WarmupEpochLR(
        optimizer,
        lr_factor(recipe.schedule, float(recipe.lrf), epochs),
        batches_per_epoch=batches_per_epoch,
        accumulate=accumulate,
        warmup_iters=warmup_iterations(float(recipe.warmup_epochs), batches_per_epoch, int(recipe.warmup_min_iters)),
        warmup_bias_lr=resolved.warmup_bias_lr,
        warmup_momentum=float(recipe.warmup_momentum),
        momentum=resolved.momentum,
    )
    return optimizer, scheduler, resolved
