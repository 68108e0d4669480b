"""Fit or evaluate one detector from a composed config (the work behind ``train.py``; used by fgkd.pipeline).

* :func:`fit` trains one detector (base, teacher on X_M, or a student against a frozen teacher), keeps the
  best checkpoint by ``val/map`` (EMA weights), exports the detector's weights and writes ``metrics.json``;
* :func:`evaluate` validates a detector on one view;
* :func:`run` dispatches a ``train.py`` config by ``stage`` / ``kd``;
* :func:`save_detector` / :func:`load_detector`: a detector-only weights file (``{"state_dict", "detector",
  "class_names"}``), e.g. the cached teacher; Lightning checkpoints load too (``student.`` prefix).

Run folder layout (``output_dir``): ``checkpoints/{best,last}.ckpt``, ``detector.pt`` (best weights),
``metrics.json``, logger folders (``csv/``, ``tensorboard/``, ``wandb/``) and Hydra's ``.hydra/``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fgkd.io import atomic_write_json
from fgkd.lit.detection import DetectionModule
from fgkd.lit.optim import Recipe, accumulate_steps
from fgkd.metrics.detection import FIVE_METRICS, PER_CLASS_PREFIX
from fgkd.models.detectors.base import Detector, build_detector

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
DETECTOR_FILE = "detector.pt"
HISTORY_FILE = "val_history.json"
#: model-config keys that describe the config itself, not detector constructor arguments
_MODEL_META_KEYS = ("name", "family", "recipe")


@dataclass
class FitResult:
    """What one :func:`fit` produced (paths are absolute)."""

    metrics: dict[str, float]
    best_epoch: int | None
    output_dir: Path
    best_ckpt: Path | None
    last_ckpt: Path | None
    detector_path: Path | None
    metrics_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    module: DetectionModule | None = None

    @property
    def five(self) -> dict[str, float]:
        return {name: self.metrics.get(name, math.nan) for name in FIVE_METRICS}


# -- config helpers ------------------------------------------------------------------------------------
def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def detector_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``build_detector`` keyword arguments from a model config: its own keys (weights, training_mode…)
    plus the recipe's ``loss`` block."""
    model_cfg = dict(_container(model_cfg))
    kwargs = {k: v for k, v in model_cfg.items() if k not in _MODEL_META_KEYS}
    recipe = model_cfg.get("recipe") or {}
    kwargs.update(dict(recipe.get("loss") or {}))
    return kwargs


def build_student(model_cfg: Mapping[str, Any], num_classes: int) -> tuple[Detector, dict[str, Any]]:
    """The detector named by ``model_cfg`` and its spec ``{"name", "num_classes", "kwargs"}``."""
    model_cfg = _container(model_cfg)
    kwargs = detector_kwargs(model_cfg)
    detector = build_detector(model_cfg["name"], num_classes, **kwargs)
    spec_kwargs = {k: v for k, v in kwargs.items() if k != "weights"}
    return detector, {"name": model_cfg["name"], "num_classes": int(num_classes), "kwargs": spec_kwargs}


def recipe_for_init(cfg: DictConfig) -> dict[str, Any] | None:
    """``model.recipe``, with ``optimizer.lr`` replaced by ``optimizer.scratch_lr`` when the detector starts
    from random init (``model.weights: null``) and the recipe names one.

    The YOLOv6 recipes are the reference *fine-tuning* recipe (the paper fine-tunes COCO weights); from random
    init its lr0 0.0032 barely moves a detector in a CPU-sized run, so random init takes the lr0 of the
    reference from-scratch configs (0.02 for n, 0.01 for s/m/l), scaled by batch like lr0.
    """
    recipe = _container(OmegaConf.select(cfg, "model.recipe"))
    if not recipe:
        return recipe
    optimizer = dict(recipe.get("optimizer") or {})
    scratch_lr = optimizer.get("scratch_lr")
    if scratch_lr is not None and not OmegaConf.select(cfg, "model.weights"):
        log.info("random init: lr0 %s (optimizer.scratch_lr) instead of the fine-tuning lr0 %s",
                 scratch_lr, optimizer.get("lr"))
        optimizer["lr"] = scratch_lr
    return {**recipe, "optimizer": optimizer}


def cuda_run(trainer_cfg: Mapping[str, Any]) -> bool:
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def resolve_trainer_args(cfg: DictConfig) -> dict[str, Any]:
    """``precision: auto`` and ``accumulate_grad_batches: auto`` made concrete (see conf/trainer/default.yaml)."""
    trainer_cfg = _container(cfg.trainer)
    resolved: dict[str, Any] = {}
    if trainer_cfg.get("precision", "auto") == "auto":
        resolved["precision"] = "16-mixed" if cuda_run(trainer_cfg) else "32-true"
    if trainer_cfg.get("accumulate_grad_batches", "auto") == "auto":
        recipe = Recipe.from_config(_container(OmegaConf.select(cfg, "model.recipe")))
        devices = trainer_cfg.get("devices", 1)
        world = devices if isinstance(devices, int) and devices > 0 else 1
        resolved["accumulate_grad_batches"] = accumulate_steps(int(cfg.batch_size), recipe.nbs, world)
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


def instantiate_loggers(logger_cfg: Mapping[str, Any] | None, output_dir: Path) -> list[Any]:
    loggers = []
    for _name, node in (logger_cfg or {}).items():
        if not isinstance(node, Mapping) or "_target_" not in node:
            continue
        overrides: dict[str, Any] = {"save_dir": str(output_dir)}
        if str(node["_target_"]).endswith("WandbLogger"):
            offline = node.get("offline", "auto")
            if offline == "auto":
                offline = not wandb_has_credentials()
            overrides["offline"] = bool(offline)
            os.makedirs(output_dir, exist_ok=True)
        loggers.append(instantiate(node, **overrides))
    return loggers


def instantiate_callbacks(callbacks_cfg: Mapping[str, Any] | None, output_dir: Path) -> list[pl.Callback]:
    callbacks = []
    for node in (callbacks_cfg or {}).values():
        if not isinstance(node, Mapping) or "_target_" not in node:
            continue
        callback = instantiate(node)
        if isinstance(callback, pl.callbacks.ModelCheckpoint):
            callback.dirpath = str(output_dir / "checkpoints")  # one folder per fit (teacher/ and student/)
        callbacks.append(callback)
    return callbacks


def build_datamodule(cfg: DictConfig, *, teacher_images: bool) -> pl.LightningDataModule:
    """Instantiate ``cfg.data`` for one fit.

    ``teacher_images``: the batches must carry X_M (``teacher_images``), built with ``cfg.preprocess``
    (combo + parameters); otherwise no preprocessing is done at all. The model recipe's ``augment`` block
    and ``close_mosaic`` (the family's default fine-tuning augmentation) are passed when present.
    """
    data_cfg = cfg.data
    target = OmegaConf.select(data_cfg, "_target_")
    if target is None:
        raise ValueError("config group data/ has no _target_ (expected fgkd.data.datamodule.DetectionDataModule)")
    accepts = _accepted_kwargs(str(target))
    overrides: dict[str, Any] = {}
    combo = str(OmegaConf.select(cfg, "preprocess.combo"))
    if teacher_images and combo == "none":
        raise ValueError(
            "this run needs the preprocessed view X_M but preprocess=none; choose a combo, e.g. preprocess=rb_sf"
        )
    if {"preprocess", "teacher_view"} <= accepts:
        if teacher_images:
            overrides["preprocess"] = _container(cfg.preprocess)
            overrides["teacher_view"] = "preprocessed"
        elif OmegaConf.select(data_cfg, "preprocess") is None:
            overrides["teacher_view"] = None
    # The model recipe's augmentation is the family's default fine-tuning setting; what the user set on the
    # command line under data.augment / data.close_mosaic still wins over it.
    recipe = _container(OmegaConf.select(cfg, "model.recipe")) or {}
    user_keys = _command_line_keys()
    if "augment" in accepts and recipe.get("augment") is not None and "data.augment" not in user_keys:
        chosen = {k: v for k, v in recipe["augment"].items() if f"data.augment.{k}" not in user_keys}
        if chosen:
            overrides["augment"] = chosen
    if "close_mosaic" in accepts and recipe.get("close_mosaic") is not None and "data.close_mosaic" not in user_keys:
        overrides["close_mosaic"] = int(recipe["close_mosaic"])
    return instantiate(data_cfg, **overrides)


def _command_line_keys() -> set[str]:
    """Config keys given as overrides of this Hydra run (``data.augment.mosaic=0`` -> ``data.augment.mosaic``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task_overrides = list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):  # no Hydra app running (plain Python use)
        return set()
    keys = set()
    for override in task_overrides:
        key = str(override).split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def _accepted_kwargs(target: str) -> set[str]:
    try:
        from hydra.utils import get_class

        return set(inspect.signature(get_class(target).__init__).parameters)
    except Exception:  # noqa: BLE001 - unknown targets simply get no extra keyword arguments
        return set()


def _prepare(datamodule: pl.LightningDataModule) -> tuple[int, list[str], int | None]:
    """Generate/check the data once here, so the class count and names are known before the model exists."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    class_names = list(getattr(datamodule, "class_names", []) or [])
    num_classes = int(getattr(datamodule, "num_classes", 0) or len(class_names))
    if num_classes < 1:
        raise ValueError(f"{type(datamodule).__name__} reports no classes (num_classes / class_names)")
    dataset_size = None
    train_dataset = getattr(datamodule, "train_dataset", None) or (getattr(datamodule, "datasets", None) or {}).get("train")
    if train_dataset is not None:
        try:
            dataset_size = len(train_dataset)
        except TypeError:
            dataset_size = None
    return num_classes, class_names, dataset_size


# -- detector files ------------------------------------------------------------------------------------
def save_detector(path: str | os.PathLike[str], detector: Detector, spec: Mapping[str, Any], class_names: list[str] | None) -> Path:
    """A detector-only weights file, written atomically (tmp + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"state_dict": detector.state_dict(), "detector": dict(spec), "class_names": class_names}, tmp)
    os.replace(tmp, path)
    return path


def load_detector(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[Detector, dict[str, Any]]:
    """Rebuild a detector from :func:`save_detector` output or a DetectionModule checkpoint.

    Returns ``(detector, info)`` with ``info = {"detector": spec, "class_names": [...]}``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"detector file not found: {path}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if "detector" in payload:
        spec, class_names, state, prefix = payload["detector"], payload.get("class_names"), payload["state_dict"], ""
    elif "hyper_parameters" in payload and "detector_spec" in payload["hyper_parameters"]:
        hparams = payload["hyper_parameters"]
        spec, class_names, state, prefix = hparams["detector_spec"], hparams.get("class_names"), payload["state_dict"], "student."
    else:
        raise ValueError(f"{path}: neither a fgkd detector file nor a DetectionModule checkpoint (no detector spec)")
    if not spec:
        raise ValueError(f"{path}: the detector spec is empty; cannot rebuild the model")
    detector = build_detector(spec["name"], int(spec["num_classes"]), **dict(spec.get("kwargs") or {}))
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    detector.load_state_dict(weights, strict=True)
    return detector, {"detector": spec, "class_names": class_names}


# -- fit / evaluate ------------------------------------------------------------------------------------
def _output_dir(cfg: DictConfig, output_dir: str | os.PathLike[str] | None) -> Path:
    if output_dir is not None:
        return Path(output_dir).resolve()
    return Path(str(OmegaConf.select(cfg, "paths.output_dir"))).resolve()


#: ``ckpt_path=auto``: resume from the fit's own last checkpoint if there is one (requeue-safe re-runs)
AUTO_RESUME = "auto"


def resolve_ckpt_path(ckpt_path: str | os.PathLike[str] | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``ckpt_path`` itself, or for ``"auto"`` ``<output_dir>/checkpoints/last.ckpt``
    when it exists (None: start fresh). A pre-empted or killed run started again with ``ckpt_path=auto`` in
    the same folder continues from its last finished epoch."""
    if ckpt_path is None or str(ckpt_path) == "":
        return None
    if str(ckpt_path) == AUTO_RESUME:
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            print(f"resuming from {last}", flush=True)
            return last
        return None
    return Path(ckpt_path)


def _teacher_kd(cfg: DictConfig) -> dict[str, Any]:
    kd = _container(cfg.kd) or {}
    return {
        "kd": kd.get("name", "none"),
        "kd_params": dict(kd.get("params") or {}),
        "taps": kd.get("taps"),
        "layers": kd.get("layers"),
        "teacher_view": kd.get("teacher_view", "preprocessed"),
        "fuse_teacher": bool(kd.get("fuse_teacher", False)),
    }


def fit(
    cfg: DictConfig,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    view: str = "original",
    val_view: str | None = None,
    teacher: Detector | None = None,
    alpha: float | None = None,
    epochs: int | None = None,
    tag: str = "train",
    ckpt_path: str | os.PathLike[str] | None = None,
) -> FitResult:
    """Train one detector described by ``cfg`` (model, data, recipe, trainer, callbacks, logger).

    ``view`` / ``val_view``: what the detector trains / is validated on (``original`` X or ``preprocessed``
    X_M). With ``teacher``, ``cfg.kd`` (loss, taps, teacher_view) and ``alpha`` (default ``cfg.alpha``) add the
    KD term. ``epochs`` overrides ``cfg.epochs`` (e.g. ``teacher.epochs``). ``tag`` names the stage in
    ``metrics.json``. ``ckpt_path``: resume from a Lightning checkpoint of the same run (e.g. ``last.ckpt``);
    ``"auto"``: this fit's own ``<output_dir>/checkpoints/last.ckpt`` when it exists, else a fresh start.
    """
    output_dir = _output_dir(cfg, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_ckpt_path(ckpt_path, output_dir)
    val_view = view if val_view is None else val_view
    kd_args = _teacher_kd(cfg) if teacher is not None else {"kd": "none"}
    alpha = float(cfg.alpha if alpha is None else alpha) if teacher is not None else 0.0
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)

    distills = teacher is not None and kd_args["kd"] != "none" and alpha > 0
    needs_xm = "preprocessed" in (view, val_view) or (distills and kd_args.get("teacher_view") == "preprocessed")
    datamodule = build_datamodule(cfg, teacher_images=needs_xm)
    num_classes, class_names, dataset_size = _prepare(datamodule)

    student, spec = build_student(cfg.model, num_classes)
    if teacher is not None and int(getattr(teacher, "num_classes", num_classes)) != num_classes:
        raise ValueError(f"teacher has {teacher.num_classes} classes but the data has {num_classes}")
    module = DetectionModule(
        student,
        detector_spec=spec,
        class_names=class_names,
        recipe=recipe_for_init(cfg),
        batch_size=int(cfg.batch_size),
        dataset_size=dataset_size,
        teacher=teacher,
        alpha=alpha,
        view=view,
        val_view=val_view,
        history_path=output_dir / HISTORY_FILE,
        **kd_args,
    )

    if ckpt_path and (output_dir / HISTORY_FILE).is_file():  # resuming this run: keep its earlier epochs
        saved = json.loads((output_dir / HISTORY_FILE).read_text())
        module.val_history, module.best_val = list(saved.get("history", [])), saved.get("best")

    callbacks = instantiate_callbacks(_container(cfg.get("callbacks")), output_dir)
    progress_on = OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True) is not False
    if progress_on and not any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks):
        # Lightning prefers a Rich bar whenever `rich` is importable (the Optuna sweeper pulls it in); the
        # tqdm bar prints plainly into log files and terminals alike.
        callbacks.append(pl.callbacks.TQDMProgressBar())
    loggers = instantiate_loggers(_container(cfg.get("logger")), output_dir)
    trainer_overrides = resolve_trainer_args(cfg)
    trainer_overrides.update(default_root_dir=str(output_dir), callbacks=callbacks, logger=loggers or False)
    if epochs is not None:
        trainer_overrides["max_epochs"] = int(epochs)
    with warnings.catch_warnings():
        # Expected with a frozen teacher or none: the teacher is eval-mode by design (ecosystem.md §3.3).
        warnings.filterwarnings("ignore", message=".*module.* in eval mode at the start of training.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer: pl.Trainer = instantiate(cfg.trainer, **trainer_overrides)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)

    checkpoint_cb = trainer.checkpoint_callback
    best_ckpt = Path(checkpoint_cb.best_model_path) if checkpoint_cb and checkpoint_cb.best_model_path else None
    last_ckpt = output_dir / "checkpoints" / "last.ckpt"  # conf/callbacks/default.yaml: last_checkpoint
    last_ckpt = last_ckpt if last_ckpt.is_file() else None
    detector_path: Path | None = None
    if trainer.is_global_zero:
        if best_ckpt is not None and best_ckpt.is_file():
            # The best checkpoint's state_dict holds the EMA weights (WeightAveraging.on_save_checkpoint).
            state = torch.load(best_ckpt, map_location="cpu", weights_only=False)["state_dict"]
            weights = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
            best_student, _ = build_student({**_container(cfg.model), "weights": None}, num_classes)
            best_student.load_state_dict(weights)
            detector_path = save_detector(output_dir / DETECTOR_FILE, best_student, spec, class_names)
        else:
            detector_path = save_detector(output_dir / DETECTOR_FILE, module.student, spec, class_names)

    history, best = list(module.val_history), module.best_val
    if best is None and (output_dir / HISTORY_FILE).is_file():  # ddp_spawn: the records live in the workers
        saved = json.loads((output_dir / HISTORY_FILE).read_text())
        history, best = saved.get("history", []), saved.get("best")
    best = best or {}
    metrics = {k: v for k, v in best.items() if k in FIVE_METRICS or k.startswith(PER_CLASS_PREFIX)}
    result = FitResult(
        metrics=metrics,
        best_epoch=best.get("epoch"),
        output_dir=output_dir,
        best_ckpt=best_ckpt,
        last_ckpt=last_ckpt,
        detector_path=detector_path,
        metrics_path=output_dir / METRICS_FILE,
        history=history,
        module=module,
    )
    if trainer.is_global_zero:
        write_metrics_json(result, cfg, tag=tag, view=view, val_view=val_view, alpha=alpha, kd=kd_args["kd"])
        _announce_wandb(loggers)
    return result


def write_metrics_json(result: FitResult, cfg: DictConfig, **context: Any) -> Path:
    """``metrics.json``: the five metrics (+ display names), per-class AP, best epoch, paths, run context."""
    from fgkd.metrics.detection import DISPLAY_NAMES

    per_class = {k[len(PER_CLASS_PREFIX):]: v for k, v in result.metrics.items() if k.startswith(PER_CLASS_PREFIX)}
    payload = {
        "metrics": result.five,
        "display": {DISPLAY_NAMES[k]: v for k, v in result.five.items()},
        "per_class": per_class,
        "epoch": result.best_epoch,
        "model": str(OmegaConf.select(cfg, "model.name")),
        "preprocess": str(OmegaConf.select(cfg, "preprocess.combo")),
        **context,
        "paths": {
            "run_dir": str(result.output_dir),
            "best_ckpt": str(result.best_ckpt) if result.best_ckpt else None,
            "last_ckpt": str(result.last_ckpt) if result.last_ckpt else None,
            "detector": str(result.detector_path) if result.detector_path else None,
        },
        "history": result.history,
    }
    return atomic_write_json(result.metrics_path, payload)


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


def evaluate(cfg: DictConfig, detector: Detector, *, view: str = "original", class_names: list[str] | None = None) -> dict[str, float]:
    """Validate ``detector`` on ``cfg.data``'s validation split seen through ``view``; returns ``val/...`` scalars."""
    datamodule = build_datamodule(cfg, teacher_images=view == "preprocessed")
    _, names, _ = _prepare(datamodule)
    module = DetectionModule(detector, class_names=class_names or names, view=view, val_view=view)
    trainer_cfg = _container(cfg.trainer)
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


# -- dispatch ------------------------------------------------------------------------------------------
def run(cfg: DictConfig) -> Any:
    """What ``train.py`` does for a validated config: choose the stage and fit.

    ``stage=teacher``: the detector on X_M (X when preprocess=none), validated on ``eval_view``;
    ``kd=none``: base training on X; ``stage=student``: the student against ``teacher.ckpt``;
    ``stage=full`` with a KD loss: ``fgkd.pipeline.run`` (cached teacher -> student). Every result has
    ``metrics`` (the five + per-class), ``output_dir``, ``metrics_path`` and ``best_ckpt``.
    """
    stage, kd = str(cfg.stage), str(cfg.kd.name)
    combo = str(OmegaConf.select(cfg, "preprocess.combo"))
    resume = OmegaConf.select(cfg, "ckpt_path")
    if stage == "teacher":
        view = "preprocessed" if combo != "none" else "original"
        val_view = str(cfg.eval_view) if combo != "none" else "original"
        return fit(cfg, view=view, val_view=val_view, epochs=int(cfg.teacher.epochs), tag="teacher", ckpt_path=resume)
    if kd == "none":
        return fit(cfg, view="original", val_view="original", tag="base", ckpt_path=resume)
    if stage == "student":
        if not cfg.teacher.ckpt:
            raise ValueError("stage=student needs teacher.ckpt=<path to a trained teacher>")
        teacher, _ = load_detector(str(cfg.teacher.ckpt))
        return fit(cfg, view="original", val_view="original", teacher=teacher, tag="student", ckpt_path=resume)
    if resume and str(resume) != AUTO_RESUME:  # auto: the pipeline resumes its student stage (fgkd.pipeline)
        raise ValueError("ckpt_path=<file> (resume) works for single-stage runs (stage=teacher|student or kd=none), "
                         "not for the two-stage pipeline; use ckpt_path=auto (resumes the student stage from "
                         "<run>/student/checkpoints/last.ckpt) or resume the stage's own run instead")
    from fgkd import pipeline  # imported here: pipeline imports this module

    return pipeline.run(cfg)

