"""The Task interface: what the engine and the pipeline ask of a task (detect, anomaly).

A task turns a validated config into the pieces of one fit and knows its own results; the engine
(``fgkd.engine``) and the two-stage pipeline never branch on the task. Roles of a fit:

* ``base``    — one model trained on its own (``kd=none`` in detect; every anomaly model);
* ``teacher`` — stage 1 of a two-stage task (detect: the teacher on X_M), cached by :meth:`Task.teacher_spec`;
* ``student`` — stage 2, against the frozen teacher given to :meth:`Task.build_module`.

Tasks register by name (``@register_task``); ``fgkd.tasks.get_task(cfg.task)`` returns the instance, importing
its module (:data:`TASK_MODULES`) on first use. A new task: a module here, its entry in ``TASK_MODULES`` and its
light checks and columns in ``fgkd.tasks.checks.SPECS``.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig

if TYPE_CHECKING:  # the interface is importable without lightning (config validation imports no torch)
    import lightning.pytorch as pl

ROLES = ("base", "teacher", "student")

_TASKS: dict[str, Task] = {}
#: where each task's implementation lives: imported by :func:`get_task` on first use, so importing the
#: interface (and validating a config, fgkd.tasks.checks) costs no torch import
TASK_MODULES = {"detect": "fgkd.tasks.detect", "anomaly": "fgkd.tasks.anomaly"}


class UnknownTaskError(ValueError):
    """``task=<name>`` names no registered task."""


class Task(ABC):
    """One task of fgkd. Subclasses set the class attributes and implement the methods below."""

    #: the ``task`` config value (``conf/task/<name>.yaml``)
    name: ClassVar[str]
    #: the reported metric columns, in table order (keys of ``metrics.json["metrics"]``)
    metric_columns: ClassVar[tuple[str, ...]]
    #: column -> the paper's header (``metrics.json["display"]``, printed tables)
    display_names: ClassVar[Mapping[str, str]]
    #: file name of the exported model in a run folder
    artifact_name: ClassVar[str]

    # -- the config ---------------------------------------------------------------------------------------
    def validate(self, cfg: DictConfig) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Task-specific checks of a composed config (raise ``fgkd.config.ConfigError``)."""

    @abstractmethod
    def needs_teacher(self, cfg: DictConfig) -> bool:
        """True when the run distils from a teacher the task trains (a two-stage run)."""

    @abstractmethod
    def teacher_spec(self, cfg: DictConfig) -> dict[str, Any] | None:
        """Every setting that shapes the teacher (its cache key), or None when the run has no teacher stage."""

    def teacher_label(self, cfg: DictConfig) -> str:
        """A readable prefix of the teacher's cache folder."""
        return "teacher"

    def recipe(self, cfg: DictConfig, role: str) -> Mapping[str, Any] | None:
        """The optimisation recipe of ``role``'s model (nominal batch for ``accumulate_grad_batches: auto``)."""
        return None

    def pretraining(self, cfg: DictConfig, role: str) -> tuple[DictConfig, dict[str, Any], str] | None:
        """``(config of the pretraining fit, its cache key spec, label)`` of ``role``'s model (``student`` or
        ``teacher``), or None when that model is not pretrained (the default; detect: ``pretrain=synthpipes``)."""
        return None

    def with_pretrained(self, cfg: DictConfig, role: str, weights: Path) -> DictConfig:
        """``cfg`` with ``role``'s model initialised from ``weights`` (the pretraining fit's artifact)."""
        raise NotImplementedError(f"task {self.name!r} has no pretraining")

    # -- one fit ------------------------------------------------------------------------------------------
    @abstractmethod
    def build_datamodule(self, cfg: DictConfig, role: str) -> pl.LightningDataModule:
        """The datamodule of one fit of ``role``."""

    @abstractmethod
    def build_module(self, cfg: DictConfig, role: str, datamodule: pl.LightningDataModule, *,
                     teacher: Any = None, history_path: str | os.PathLike[str] | None = None) -> pl.LightningModule:
        """The LightningModule of one fit; it keeps ``module.history`` (``fgkd.lit.history.ValidationHistory``)."""

    @abstractmethod
    def save_artifact(self, cfg: DictConfig, role: str, module: pl.LightningModule, best_ckpt: Path | None,
                      output_dir: Path) -> Path:
        """Export the fit's model (the best checkpoint's weights when there is one) into ``output_dir``."""

    @abstractmethod
    def load_artifact(self, path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
        """``(model, info)`` from :meth:`save_artifact` output (or a Lightning checkpoint of the task)."""

    def held_out_test(self, cfg: DictConfig, role: str, module: pl.LightningModule,
                      artifact_path: Path) -> dict[str, Any] | None:
        """``metrics.json["test"]``: the exported model (``artifact_path``) on a held-out test split that took no
        part in choosing the epoch, or None when the data has none (the default; detect: a ``test`` split)."""
        return None

    # -- results ------------------------------------------------------------------------------------------
    def summarize(self, best: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        """``(metrics, per_class)`` from the best validation record: the metric columns (NaN when absent)."""
        metrics = {name: float(best.get(name, float("nan"))) for name in self.metric_columns}
        return metrics, {}

    def run_info(self, cfg: DictConfig, role: str) -> dict[str, Any]:
        """What ``metrics.json["run"]`` says about the run (model, data, views ...)."""
        return {}

    def extras(self, best: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics.json["extras"]`` of one fit; its ``rows`` ({label: {column: value}}) are printed beside the
        run's own row (e.g. the anomaly task's trivial baseline)."""
        return {}

    # -- runs of several fits -----------------------------------------------------------------------------
    def expand(self, cfg: DictConfig) -> list[tuple[str, DictConfig]]:
        """The fits one run stands for, as ``(label, cfg)`` (anomaly ``data.category=all``: one per category);
        ``[]`` for a run of one fit (or one two-stage pipeline)."""
        return []

    def aggregate(self, cfg: DictConfig, parts: Mapping[str, Mapping[str, Any]]
                  ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
        """``(metrics, per_class, extras)`` of an expanded run from its parts' ``metrics.json`` payloads."""
        raise NotImplementedError(f"task {self.name!r} does not expand runs")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls()`` the task named ``cls.name``."""
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice ({type(_TASKS[cls.name]).__name__}, {cls.__name__})")
    _TASKS[cls.name] = cls()
    return cls


def list_tasks() -> list[str]:
    return sorted(set(TASK_MODULES) | set(_TASKS))


def get_task(name: str | DictConfig) -> Task:
    """The registered task ``name`` (or ``cfg.task`` of a config); its module is imported on first use."""
    if isinstance(name, DictConfig):
        name = str(name.get("task"))
    if name not in _TASKS and name in TASK_MODULES:
        importlib.import_module(TASK_MODULES[name])
    if name not in _TASKS:
        raise UnknownTaskError(f"task={name!r} is not a task; choose one of: {', '.join(list_tasks())} "
                               f"(e.g. `python train.py task={list_tasks()[0]}`)")
    return _TASKS[name]
