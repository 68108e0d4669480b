"""The ``recipe`` block of a detector config, parsed and validated without torch (see fgkd.lit.optim for
what the recipe does); config validation uses it before any heavy import."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

OPTIMIZERS = ("auto", "sgd", "adamw", "adam")
SCHEDULES = ("linear", "cosine", "constant")
#: recipe keys consumed elsewhere (detector loss settings, data augmentation) and accepted here untouched
PASS_THROUGH_KEYS = ("loss", "augment")


class RecipeError(ValueError):
    """A bad key or value in a model config's ``recipe`` block."""


@dataclass
class Recipe:
    """A flat, validated view of ``model.recipe`` (defaults = Ultralytics ``cfg/default.yaml``)."""

    optimizer: str = "auto"
    lr: float | str = 0.01
    lr_reference_batch: int | None = None
    #: lr0 of the reference's from-scratch config; fgkd.tasks.detect.recipe_for_init uses it instead of ``lr`` for random init
    scratch_lr: float | None = None
    momentum: float = 0.937
    weight_decay: float = 5e-4
    nesterov: bool = False
    nbs: int = 64
    schedule: str = "linear"
    lrf: float = 0.01
    warmup_epochs: float = 3.0
    warmup_min_iters: int = 100
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    close_mosaic: int = 10
    #: learning-rate multiplier of the detector's ``backbone`` parameters (RT-DETR: 0.1, i.e. 1e-5 of 1e-4)
    backbone_lr_scale: float = 1.0
    #: max L2 norm of all gradients before each optimizer step (RT-DETR: 0.1); null = no clipping
    clip_grad_norm: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any] | None) -> Recipe:
        """Parse ``{optimizer: {name, lr, ...}, scheduler: {name, lrf, ...}, close_mosaic, loss, augment}``."""
        if recipe is None:
            return cls()
        recipe = dict(recipe)
        values: dict[str, Any] = {}
        sections = {
            "optimizer": {"name": "optimizer", "lr": "lr", "lr_reference_batch": "lr_reference_batch",
                          "momentum": "momentum", "weight_decay": "weight_decay", "nesterov": "nesterov",
                          "nbs": "nbs", "scratch_lr": "scratch_lr", "backbone_lr_scale": "backbone_lr_scale",
                          "clip_grad_norm": "clip_grad_norm"},
            "scheduler": {"name": "schedule", "lrf": "lrf", "warmup_epochs": "warmup_epochs",
                          "warmup_min_iters": "warmup_min_iters", "warmup_momentum": "warmup_momentum",
                          "warmup_bias_lr": "warmup_bias_lr"},
        }
        for section, mapping in sections.items():
            block = dict(recipe.pop(section, None) or {})
            unknown = sorted(set(block) - set(mapping))
            if unknown:
                raise RecipeError(
                    f"model.recipe.{section}: unknown key(s) {unknown}; allowed: {', '.join(sorted(mapping))}"
                )
            values.update({mapping[key]: value for key, value in block.items()})
        if "close_mosaic" in recipe:
            values["close_mosaic"] = recipe.pop("close_mosaic")
        extras = {key: recipe.pop(key) for key in PASS_THROUGH_KEYS if key in recipe}
        if recipe:
            raise RecipeError(
                f"model.recipe: unknown key(s) {sorted(recipe)}; allowed: optimizer, scheduler, close_mosaic, "
                + ", ".join(PASS_THROUGH_KEYS)
            )
        parsed = cls(**values, extras=extras)
        parsed.validate()
        return parsed

    def validate(self) -> None:
        self.optimizer = str(self.optimizer).lower()
        self.schedule = str(self.schedule).lower()
        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"model.recipe.optimizer.name={self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"model.recipe.scheduler.name={self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if not (self.lr == "auto" or (isinstance(self.lr, (int, float)) and self.lr > 0)):
            raise RecipeError(f"model.recipe.optimizer.lr must be a positive number or 'auto', got {self.lr!r}")
        for name in ("momentum", "weight_decay", "lrf", "warmup_epochs", "warmup_momentum", "warmup_bias_lr"):
            if float(getattr(self, name)) < 0:
                raise RecipeError(f"model.recipe: {name} must be >= 0, got {getattr(self, name)!r}")
        if int(self.nbs) < 1 or int(self.warmup_min_iters) < 0 or int(self.close_mosaic) < 0:
            raise RecipeError("model.recipe: nbs must be >= 1; warmup_min_iters and close_mosaic >= 0")
        if not float(self.backbone_lr_scale) >= 0:
            raise RecipeError(f"model.recipe.optimizer.backbone_lr_scale must be >= 0, got {self.backbone_lr_scale!r}")
        if self.clip_grad_norm is not None and not float(self.clip_grad_norm) > 0:
            raise RecipeError(f"model.recipe.optimizer.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm!r}")
        if self.lr_reference_batch is not None and int(self.lr_reference_batch) < 1:
            raise RecipeError(f"model.recipe.optimizer.lr_reference_batch must be >= 1 or null, got {self.lr_reference_batch}")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
