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

        load_weights(model, weights)
    return model
