"""One registry for every model family: register, build, list; ``weights=PATH`` is loaded here, once.

timm-style: a family module registers its factories on import (``@register_model("yolov8n", task="detect")``
on ``f(num_classes, **options)``), and the registry finds the families by importing every module of the
family packages (:data:`FAMILY_PACKAGES`), so a new family is a new file and nothing else. Errors have one
type and one message shape in every family: :class:`UnknownModelError` (an unknown name, with the names
registered for the task) and :class:`UnknownOptionError` (an option the factory does not take, with the
allowed ones; see :func:`check_options`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

#: packages whose modules hold model families (each imported once, on the first lookup)
FAMILY_PACKAGES = ("fgkd.models.detectors", "fgkd.models.anomaly")


class UnknownModelError(ValueError):
    """A model name that no family registered."""


class UnknownOptionError(ValueError, TypeError):
    """An option a model factory does not accept (a ValueError and, for keyword misuse, a TypeError)."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    factory: Callable[..., nn.Module]


_ENTRIES: dict[str, ModelEntry] = {}
_imported = False


def register_model(name: str, task: str = "detect") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory(num_classes, **options)`` under ``name`` for ``task``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ENTRIES:
            raise ValueError(f"model {name!r} registered twice")
        _ENTRIES[name] = ModelEntry(name, task, factory)
        return factory

    return wrap


def _import_families() -> None:
    global _imported
    if _imported:
        return
    for package_name in FAMILY_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as err:
            if err.name == package_name:  # a family package not written yet
                continue
            raise
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            importlib.import_module(info.name)
    _imported = True


def list_models(task: str | None = None) -> list[str]:
    """Registered names (of one task, or all), sorted."""
    _import_families()
    return sorted(name for name, entry in _ENTRIES.items() if task is None or entry.task == task)


def model_task(name: str) -> str:
    return _entry(name).task


def _entry(name: str) -> ModelEntry:
    _import_families()
    if name not in _ENTRIES:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_ENTRIES))}")
    return _ENTRIES[name]


def check_options(name: str, options: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise :class:`UnknownOptionError` for options outside ``allowed`` (the one message every family uses)."""
    allowed = list(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownOptionError(f"{name}: unknown option(s) {unknown}; allowed: weights, {', '.join(allowed)}")


def build_model(name: str, num_classes: int, weights: str | None = None, **options: Any) -> nn.Module:
    """Build a registered model with random init, then load ``weights`` (a local file) when given.

    Loading is strict (:func:`fgkd.models.weights.load_weights`): missing, unexpected and mis-shaped keys are
    listed in the error. Nothing is ever downloaded.
    """
    entry = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    model = entry.factory(num_classes=num_classes, **options)
    if weights:
        from fgkd.models.weights import load_weights

        try:
            load_weights(model, weights)
        except ValueError as err:  # shape mismatches: of the class heads only (COCO's 80 classes vs yours)?
            class_keys = class_dependent_keys(entry, num_classes, options)
            report = load_weights(model, weights, strict=False, skip_mismatched=True)
            mismatched = [m.split(":", 1)[0] for m in report.mismatched]
            if not mismatched or not set(mismatched) <= class_keys or report.missing or report.unexpected:
                raise err
            print(f"{name}: {weights} has another number of classes; re-initialised the {len(mismatched)} class-head "
                  f"tensor(s) {', '.join(mismatched)} (everything else loaded)", flush=True)
    return model


def class_dependent_keys(entry: ModelEntry, num_classes: int, options: dict[str, Any]) -> set[str]:
    """State-dict keys whose shape depends on the number of classes, found by building the model for other class
    counts on the meta device (allocates nothing): nc + 1, and nc + 101 for widths that follow nc up to a cap
    (YOLOv8's class branch: max(c, min(nc, 100)) channels)."""
    import torch

    with torch.device("meta"):
        own = entry.factory(num_classes=num_classes, **options).state_dict()
        others = [entry.factory(num_classes=num_classes + extra, **options).state_dict() for extra in (1, 101)]
    return {key for key, value in own.items() for other in others if key in other and other[key].shape != value.shape}
