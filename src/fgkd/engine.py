"""The task-agnostic fit: Trainer, loggers, callbacks, precision, resume, :class:`FitResult`, ``metrics.json``.

``fit(cfg, task, role)`` asks the task (``fgkd.tasks``) for the datamodule, the LightningModule and, at the
end, to export its artifact (a detector's weights, an anomaly model); everything else is the same for every
task: seeding, the Trainer from ``cfg.trainer`` (``precision: auto``, ``accumulate_grad_batches: auto``),
loggers and callbacks from their groups, resume (``ckpt_path=auto``: the fit's own ``last.ckpt``), the best
record of ``module.history`` (``fgkd.lit.history.ValidationHistory``) and one ``metrics.json`` schema
(:func:`metrics_payload`) for every stage and every task.

Run folder (``output_dir``): ``checkpoints/{best,last}.ckpt``, the task's artifact (``detector.pt`` …),
``metrics.json``, ``val_history.json``, logger folders (``csv/``, ``tensorboard/``, ``wandb/``) and ``.hydra/``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from fgkd.config import to_plain
from fgkd.io import atomic_write_json, read_json
from fgkd.lit.checkpoint_io import AtomicCheckpointIO, loadable_checkpoint
from fgkd.lit.history import TrainLossesToHistory
from fgkd.lit.interrupt import stop_on_ctrl_c
from fgkd.lit.optim import Recipe, accumulate_steps
from fgkd.lit.progress import EpochLines, StageProgressBar
from fgkd.lit.speed import apply_speed_options
from fgkd.lit.timing import TimeBreakdown, breakdown, format_breakdown
from fgkd.metrics.curves import RESULTS_FILE, plot_history
from fgkd.paths import SWEEP_GROUP_ENV

if TYPE_CHECKING:
    from fgkd.tasks.base import Task

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
HISTORY_FILE = "val_history.json"
#: version of the ``metrics.json`` layout written by :func:`metrics_payload`
METRICS_SCHEMA = "fgkd.metrics/1"
#: ``ckpt_path=auto``: resume from the fit's own last checkpoint if there is one (requeue-safe re-runs)
AUTO_RESUME = "auto"


@dataclass
class FitResult:
    """What one :func:`fit` produced (paths are absolute). ``metrics``: the task's metric columns at the best
    epoch; ``per_class``: per-class values of the first column (e.g. AP per damage class)."""

    task: str
    role: str
    metrics: dict[str, float]
    per_class: dict[str, float]
    best_epoch: int | None
    output_dir: Path
    best_ckpt: Path | None
    last_ckpt: Path | None
    artifact_path: Path | None
    metrics_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    module: pl.LightningModule | None = field(default=None, repr=False)
    extras: dict[str, Any] = field(default_factory=dict)


# -- Trainer pieces ------------------------------------------------------------------------------------
def cuda_run(trainer_cfg: Mapping[str, Any]) -> bool:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def resolve_trainer_args(cfg: DictConfig, recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``precision: auto`` and ``accumulate_grad_batches: auto`` made concrete (see conf/trainer/default.yaml).

    ``accumulate_grad_batches: auto`` keeps the recipe's nominal batch (``optimizer.nbs``, default
    ``model.recipe``) over the world's batch; without a recipe every batch is an optimizer step.
    """
    trainer_cfg = to_plain(cfg.trainer)
    resolved: dict[str, Any] = {}
    if trainer_cfg.get("precision", "auto") == "auto":
        resolved["precision"] = "16-mixed" if cuda_run(trainer_cfg) else "32-true"
    if trainer_cfg.get("accumulate_grad_batches", "auto") == "auto":
        recipe = to_plain(OmegaConf.select(cfg, "model.recipe")) if recipe is None else recipe
        if recipe:
            devices = trainer_cfg.get("devices", 1)
            world = devices if isinstance(devices, int) and devices > 0 else 1
            nbs = Recipe.from_config(dict(recipe)).nbs
            resolved["accumulate_grad_batches"] = accumulate_steps(int(cfg.batch_size), nbs, world)
        else:
            resolved["accumulate_grad_batches"] = 1
    for key in ("limit_train_batches", "limit_val_batches"):
        if key in trainer_cfg and trainer_cfg[key] is None:
            resolved[key] = 1.0  # Lightning's default; null in the yaml only makes the key overridable
    return resolved


def wandb_has_credentials() -> bool:
    """True when W&B can log online without a prompt: WANDB_API_KEY or a netrc entry for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        netrc_path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
        return bool(Path(netrc_path).is_file() and netrc.netrc(netrc_path).authenticators("api.wandb.ai"))
    except (OSError, netrc.NetrcParseError):  # type: ignore[name-defined]
        return False


def instantiate_loggers(logger_cfg: Mapping[str, Any] | None, output_dir: Path, role: str = "base") -> list[Any]:
    """The loggers of one fit. W&B: offline unless credentials exist, ``job_type`` the fit's role (base | teacher
    | student) unless set, ``group`` the sweep's name for a sweep's runs (``$FGKD_SWEEP_GROUP``) unless set."""
    loggers = []
    for _name, node in (to_plain(logger_cfg) or {}).items():
        if not isinstance(node, Mapping) or "_target_" not in node:
            continue
        overrides: dict[str, Any] = {"save_dir": str(output_dir)}
        if str(node["_target_"]).endswith("WandbLogger"):
            offline = node.get("offline", "auto")
            if offline == "auto":
                offline = not wandb_has_credentials()
            overrides["offline"] = bool(offline)
            if node.get("job_type") in (None, "", "train"):
                overrides["job_type"] = role
            if not node.get("group") and os.environ.get(SWEEP_GROUP_ENV):
                overrides["group"] = os.environ[SWEEP_GROUP_ENV]
            os.makedirs(output_dir, exist_ok=True)
        loggers.append(instantiate(node, **overrides))
    return loggers


def media_callback(logger_cfg: Mapping[str, Any] | None) -> pl.Callback | None:
    """``logger.media_every`` (> 0) with a logger that takes images: the dashboards' pictures (fgkd.lit.media)."""
    cfg = to_plain(logger_cfg) or {}
    every = int(cfg.get("media_every") or 0)
    takes_images = any(isinstance(node, Mapping) and str(node.get("_target_", "")).endswith(("WandbLogger", "TensorBoardLogger"))
                       for node in cfg.values())
    if every <= 0 or not takes_images:
        return None
    from fgkd.lit.media import ValidationMedia

    return ValidationMedia(every=every, num_images=int(cfg.get("media_images") or 4))


def instantiate_callbacks(callbacks_cfg: Mapping[str, Any] | None, output_dir: Path) -> list[pl.Callback]:
    callbacks = []
    for node in (to_plain(callbacks_cfg) or {}).values():
        if not isinstance(node, Mapping) or "_target_" not in node:
            continue
        callback = instantiate(node)
        if isinstance(callback, pl.callbacks.ModelCheckpoint):
            callback.dirpath = str(output_dir / "checkpoints")  # one folder per fit
        callbacks.append(callback)
    return callbacks


def resolve_ckpt_path(ckpt_path: str | os.PathLike[str] | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``ckpt_path`` itself, or for ``"auto"`` ``<output_dir>/checkpoints/last.ckpt``
    when it exists (None: start fresh). A pre-empted or killed run started again with ``ckpt_path=auto`` in
    the same folder continues from its last finished epoch."""
    if ckpt_path is None or str(ckpt_path) == "":
        return None
    if str(ckpt_path) == AUTO_RESUME:
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            chosen = loadable_checkpoint(last)
            if chosen is not None:
                print(f"resuming from {chosen}", flush=True)
            return chosen
        return None
    return Path(ckpt_path)


def _output_dir(cfg: DictConfig, output_dir: str | os.PathLike[str] | None) -> Path:
    if output_dir is not None:
        return Path(output_dir).resolve()
    return Path(str(OmegaConf.select(cfg, "paths.output_dir"))).resolve()


def build_trainer(cfg: DictConfig, output_dir: Path, *, epochs: int | None = None,
                  recipe: Mapping[str, Any] | None = None, stage: str = "",
                  metrics: tuple[str, ...] = (), later_epochs: int = 0, role: str = "base") -> tuple[pl.Trainer, list[Any]]:
    """The Trainer of one fit (``cfg.trainer`` + callbacks + loggers) and its loggers. ``stage`` names the fit
    on the progress bar and in the per-epoch lines (``teacher``, ``student``); ``metrics``: the columns printed."""
    callbacks = instantiate_callbacks(cfg.get("callbacks"), output_dir)
    callbacks.append(TrainLossesToHistory())  # losses beside the metrics in metrics.json and results.png
    callbacks.append(TimeBreakdown())  # before the checkpoint callbacks (Lightning runs those last)
    progress_on = OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True) is not False
    overrides: dict[str, Any] = {}
    if progress_on and not sys.stdout.isatty():
        progress_on = False  # a log file: one line per epoch instead of carriage-return bar lines
        overrides["enable_progress_bar"] = False
    if progress_on and not any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks):
        # Lightning prefers a Rich bar whenever `rich` is importable (the Optuna sweeper pulls it in); the
        # tqdm bar prints plainly into terminals.
        callbacks.append(StageProgressBar(stage))
    if not progress_on:
        callbacks.append(EpochLines(stage, metrics, later_epochs))
    loggers = instantiate_loggers(cfg.get("logger"), output_dir, role)
    media = media_callback(cfg.get("logger"))
    if media is not None:
        callbacks.append(media)
    overrides.update(resolve_trainer_args(cfg, recipe))
    # checkpoints written beside their destination, fsync'ed, renamed (a full disk keeps the earlier file)
    overrides.update(default_root_dir=str(output_dir), callbacks=callbacks, logger=loggers or False,
                     plugins=[AtomicCheckpointIO()])
    if epochs is not None:
        overrides["max_epochs"] = int(epochs)
    return instantiate(cfg.trainer, **overrides), loggers


# -- fit -----------------------------------------------------------------------------------------------
def fit(
    cfg: DictConfig,
    task: Task,
    role: str,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    teacher: Any = None,
    epochs: int | None = None,
    ckpt_path: str | os.PathLike[str] | None = None,
    teacher_info: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train the model ``task`` builds for ``role`` (``base`` | ``teacher`` | ``student``) and export it.

    ``teacher``: the frozen teacher of a student fit (``task.load_artifact``). ``epochs`` overrides
    ``cfg.epochs`` (e.g. ``teacher.epochs``). ``ckpt_path``: resume from a Lightning checkpoint of the same
    run; ``"auto"``: this fit's own ``<output_dir>/checkpoints/last.ckpt`` when it exists, else a fresh start.
    ``teacher_info``: what the run's ``metrics.json`` says of the teacher a student learned from.
    """
    started = time.perf_counter()
    output_dir = _output_dir(cfg, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_ckpt_path(ckpt_path, output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)

    datamodule = task.build_datamodule(cfg, role)
    module = task.build_module(cfg, role, datamodule, teacher=teacher, history_path=output_dir / HISTORY_FILE)
    if ckpt_path:  # resuming this run: keep its earlier epochs
        module.history.load()
    speed = apply_speed_options(module, channels_last=bool(cfg.get("channels_last", False)),
                                compile=cfg.get("compile", False),
                                device_type="cuda" if cuda_run(cfg.trainer) else "cpu")
    _announce_fit(task, cfg, role, module, output_dir, epochs, speed)

    two_stage = str(cfg.get("stage", "full")) == "full" and task.needs_teacher(cfg)
    stage = {"teacher": "teacher 1/2", "student": "student 2/2"}.get(role, role) if two_stage else role
    trainer, loggers = build_trainer(
        cfg, output_dir, epochs=epochs, recipe=task.recipe(cfg, role) or {}, stage="" if role == "base" else stage,
        metrics=tuple(task.metric_columns[:3]), later_epochs=int(cfg.epochs) if two_stage and role == "teacher" else 0,
        role=role)
    timer = next(c for c in trainer.callbacks if isinstance(c, TimeBreakdown))
    _log_config(loggers, cfg, role, teacher_info)
    fit_started = time.perf_counter()
    with warnings.catch_warnings():
        # Expected with a frozen teacher or none: the teacher is eval-mode by design (ecosystem.md §3.3).
        warnings.filterwarnings("ignore", message=".*module.* in eval mode at the start of training.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        try:
            with stop_on_ctrl_c(trainer) as ctrl_c:
                trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
            if ctrl_c.requested:
                _stopped(trainer, output_dir, "Ctrl-C", 130)
        except SIGTERMException:
            # Lightning stops on SIGTERM (a scheduler's preemption) by raising SystemExit() - exit code 0, as if
            # the run had finished. Keep the progress and exit 143 (128 + SIGTERM) so callers see the stop.
            _stopped(trainer, output_dir, "SIGTERM", 143)
        except SystemExit:
            if not trainer.interrupted:
                raise
            _stopped(trainer, output_dir, "Ctrl-C", 130)  # Lightning's graceful Ctrl-C exits 1

    fit_ended = time.perf_counter()
    checkpoint_cb = trainer.checkpoint_callback
    best_ckpt = Path(checkpoint_cb.best_model_path) if checkpoint_cb and checkpoint_cb.best_model_path else None
    best_ckpt = best_ckpt if best_ckpt is not None and best_ckpt.is_file() else None
    last_ckpt = output_dir / "checkpoints" / "last.ckpt"  # conf/callbacks/default.yaml: last_checkpoint
    last_ckpt = last_ckpt if last_ckpt.is_file() else None
    artifact_path = task.save_artifact(cfg, role, module, best_ckpt, output_dir) if trainer.is_global_zero else None

    history = module.history
    if history.best is None:  # ddp_spawn: the records live in the workers' copies, and in the history file
        history.load()
    metrics, per_class = task.summarize(history.best or {})
    best = history.best or {}
    result = FitResult(
        task=task.name, role=role, metrics=metrics, per_class=per_class, best_epoch=best.get("epoch"),
        output_dir=output_dir, best_ckpt=best_ckpt, last_ckpt=last_ckpt, artifact_path=artifact_path,
        metrics_path=output_dir / METRICS_FILE, history=list(history.records), module=module,
        extras=task.extras(best),
    )
    if trainer.is_global_zero:
        test = task.held_out_test(cfg, role, module, artifact_path) if artifact_path is not None else None
        timing = breakdown(timer, fit_started - started, time.perf_counter() - fit_ended)
        print(format_breakdown(role, timing), flush=True)
        write_metrics(result.metrics_path, {**metrics_payload(task, result, run=task.run_info(cfg, role),
                                                              teacher=teacher_info, test=test), "timing": timing})
        try:
            plot_history(result.history, output_dir / RESULTS_FILE, task.metric_columns, task.display_names,
                         title=f"{task.name} · {role}")
        except Exception as err:  # noqa: BLE001 - a picture must never fail a finished run
            log.warning("could not draw %s: %s", output_dir / RESULTS_FILE, err)
        _announce_wandb(loggers)
    return result


def _announce_fit(task: Task, cfg: DictConfig, role: str, module: pl.LightningModule, output_dir: Path,
                  epochs: int | None, speed: list[str]) -> None:
    """One line naming the fit: its role, model, parameter counts (frozen teachers excluded), epochs, folder."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    model = task.run_info(cfg, role).get("model", "?")
    print(f"[{task.name}] {role} fit: {model}, {trainable / 1e6:.2f} M trainable of {total / 1e6:.2f} M parameters, "
          f"{epochs if epochs is not None else cfg.epochs} epochs" + (f" ({', '.join(speed)})" if speed else "")
          + f" -> {output_dir}", flush=True)


def _log_config(loggers: list[Any], cfg: DictConfig, role: str, teacher_info: Mapping[str, Any] | None) -> None:
    """W&B: the resolved config of the fit, its role and (students) where its teacher lives, so a student's run
    links to its teacher's files (the teacher cache entry, its metrics.json and, when it logged to W&B, its run)."""
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        try:
            extra = {"fgkd_role": role, "fgkd_config": to_plain(cfg)}
            if teacher_info:
                extra["fgkd_teacher"] = {k: teacher_info.get(k) for k in ("path", "key", "source", "file", "metrics")}
            logger.experiment.config.update(extra, allow_val_change=True)
        except Exception as err:  # noqa: BLE001 - reporting must never fail a run
            log.warning("could not log the config to W&B: %s", err)


def _stopped(trainer: pl.Trainer, output_dir: Path, what: str, code: int) -> None:
    """Save the progress of an interrupted fit into its last.ckpt, say how to resume, exit ``code``."""
    last = output_dir / "checkpoints" / "last.ckpt"
    try:
        trainer.save_checkpoint(last)
        saved = f"progress saved to {last}; "
    except Exception as err:  # noqa: BLE001 - the stop itself must still be reported
        saved = f"could not save {last} ({err}); "
    print(f"stopped by {what}: {saved}resume with ckpt_path=auto (same run folder)", flush=True)
    raise SystemExit(code) from None


def validate_once(cfg: DictConfig, module: pl.LightningModule, datamodule: pl.LightningDataModule) -> dict[str, float]:
    """One validation pass of ``module`` on one device, without loggers or checkpoints; ``val/...`` scalars."""
    trainer_cfg = to_plain(cfg.trainer)
    trainer = pl.Trainer(
        accelerator=trainer_cfg.get("accelerator", "auto"),
        devices=1,
        precision=resolve_trainer_args(cfg).get("precision", trainer_cfg.get("precision")),
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=trainer_cfg.get("limit_val_batches") or 1.0,
    )
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


# -- metrics.json --------------------------------------------------------------------------------------
def metrics_payload(task: Task, result: FitResult, *, run: Mapping[str, Any],
                    teacher: Mapping[str, Any] | None = None, paths: Mapping[str, Any] | None = None,
                    test: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one ``metrics.json`` layout of every stage and task::

        {"schema", "task", "role",            # role: base | teacher | student
         "metrics": {column: value},           # the task's metric columns at the best epoch (student: the student's)
         "display": {paper name: value}, "per_class": {...}, "epoch": best epoch,
         "run": {...},                         # the task's description of the run (model, views, kd, alpha ...)
         "teacher": null | {"metrics", "path", "source", ...},
         "test": null | {"metrics", "images", "views": {view: {"metrics", "per_class"}}, ...},  # Task.held_out_test
         "paths": {"run_dir", "best_ckpt", "last_ckpt", "artifact", ...}, "history": [...],
         "extras": {...}}                      # the task's additions (Task.extras; e.g. {"rows": {baseline}})
    """
    return {
        "schema": METRICS_SCHEMA,
        "task": task.name,
        "role": result.role,
        "metrics": dict(result.metrics),
        "display": {task.display_names.get(k, k): v for k, v in result.metrics.items()},
        "per_class": dict(result.per_class),
        "epoch": result.best_epoch,
        "run": dict(run),
        "teacher": dict(teacher) if teacher is not None else None,
        "test": dict(test) if test is not None else None,
        "paths": {
            "run_dir": str(result.output_dir),
            "best_ckpt": str(result.best_ckpt) if result.best_ckpt else None,
            "last_ckpt": str(result.last_ckpt) if result.last_ckpt else None,
            "artifact": str(result.artifact_path) if result.artifact_path else None,
            **dict(paths or {}),
        },
        "history": list(result.history),
        "extras": dict(result.extras),
    }


def write_metrics(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(payload))


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``metrics.json`` written by :func:`write_metrics`; a clear error for anything else."""
    path = Path(path)
    payload = read_json(path)
    if payload is None:
        raise FileNotFoundError(f"{path}: no metrics.json (the run has not finished)")
    if not isinstance(payload, dict) or payload.get("schema") != METRICS_SCHEMA:
        found = payload.get("schema") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a {METRICS_SCHEMA} metrics file (schema {found!r}); it was written by "
                         "another fgkd version or by hand: delete it and run the stage again")
    return payload


def _announce_wandb(loggers: list[Any]) -> None:
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        try:
            import wandb

            run = wandb.run
            if run is not None and getattr(run.settings, "mode", "") in ("offline", "dryrun"):
                print(f"W&B ran offline; upload with: wandb sync {Path(run.dir).parent}")
            wandb.finish()  # the next job of a multirun must get a fresh run (ecosystem.md §2.5)
        except Exception as err:  # noqa: BLE001 - reporting must never fail a finished run
            log.warning("could not finish the W&B run: %s", err)
