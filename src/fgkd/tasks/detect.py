"""The detection task (FAKD): datamodule and DetectionModule per role, views, teacher spec, detector files.

Roles and views (what each fit trains / is validated on):

* ``base`` (``kd=none``) and ``student``: the original images X for both;
* ``teacher``: X_M (``preprocessed``) — or X when ``kd.teacher_view=original`` (classical feature KD) or
  ``preprocess=none`` — validated on ``eval_view`` when it trains on X_M (Table 1: X_M, Table 2: X).

A student sees X while its frozen teacher sees ``kd.teacher_view`` of the same augmented sample. The teacher
is the student's architecture unless ``model@teacher.model=<option>`` chose another (a heterogeneous pair).
Augmentation: the model recipe's ``augment`` / ``close_mosaic`` (the family's fine-tuning default) under
``data.augment`` / ``data.close_mosaic`` — a key set there (in a data preset or on the command line) wins.

Detector files (:func:`save_detector` / :func:`load_detector`): ``{"state_dict", "detector", "class_names"}``
with the spec ``{"name", "num_classes", "kwargs"}``; DetectionModule checkpoints load too (``student.``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import fgkd
from fgkd.config import ConfigError, to_plain
from fgkd.engine import METRICS_SCHEMA, validate_once
from fgkd.io import atomic_save
from fgkd.lit.detection import DetectionModule
from fgkd.lit.guards import NonFiniteLossGuard, check_finite_state
from fgkd.metrics.detection import PER_CLASS_PREFIX, build_map_metric, summarize
from fgkd.models.detectors.base import Detector, build_detector
from fgkd.options import DISPLAY_NAMES, FIVE_METRICS, VIEW_KEYS
from fgkd.tasks.base import Task, register_task
from fgkd.tasks.checks import check_detect, require_combo
from fgkd.teacher_cache import dataset_fingerprint

log = logging.getLogger(__name__)

DETECTOR_FILE = "detector.pt"
#: model-config keys that describe the config itself, not detector constructor arguments
_MODEL_META_KEYS = ("name", "family", "recipe", "task")
#: prefix of the student's weights in a DetectionModule state dict
STUDENT_PREFIX = "student."
#: trainer / callback keys that do not change what a teacher learns (logging and bookkeeping only)
_NON_SHAPING_TRAINER_KEYS = ("default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                             "max_epochs")  # the teacher's epochs are teacher.epochs, recorded on their own


# -- detectors from configs and files ------------------------------------------------------------------
def detector_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``build_detector`` keyword arguments from a model config: its own keys (weights, training_mode…)
    plus the recipe's ``loss`` block."""
    model_cfg = dict(to_plain(model_cfg))
    kwargs = {k: v for k, v in model_cfg.items() if k not in _MODEL_META_KEYS}
    recipe = model_cfg.get("recipe") or {}
    kwargs.update(dict(recipe.get("loss") or {}))
    return kwargs


def build_student(model_cfg: Mapping[str, Any], num_classes: int) -> tuple[Detector, dict[str, Any]]:
    """The detector named by ``model_cfg`` and its spec ``{"name", "num_classes", "kwargs"}``."""
    model_cfg = to_plain(model_cfg)
    kwargs = detector_kwargs(model_cfg)
    detector = build_detector(model_cfg["name"], num_classes, **kwargs)
    spec_kwargs = {k: v for k, v in kwargs.items() if k != "weights"}
    return detector, {"name": model_cfg["name"], "num_classes": int(num_classes), "kwargs": spec_kwargs}


def save_detector(path: str | os.PathLike[str], detector: Detector, spec: Mapping[str, Any],
                  class_names: list[str] | None, imgsz: int | None = None) -> Path:
    """A detector-only weights file, written atomically (never with non-finite weights); ``imgsz``: the
    training input size (predict.py's default)."""
    check_finite_state(detector.state_dict(), f"detector file {path}")
    payload = {"state_dict": detector.state_dict(), "detector": dict(spec), "class_names": class_names,
               "imgsz": int(imgsz) if imgsz else None}
    return atomic_save(path, lambda handle: torch.save(payload, handle))


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
        imgsz = payload.get("imgsz")
    elif "hyper_parameters" in payload and "detector_spec" in payload["hyper_parameters"]:
        hparams = payload["hyper_parameters"]
        spec, class_names, state, prefix = hparams["detector_spec"], hparams.get("class_names"), payload["state_dict"], STUDENT_PREFIX
        imgsz = None
    else:
        raise ValueError(f"{path}: neither a fgkd detector file nor a DetectionModule checkpoint (no detector spec)")
    if not spec:
        raise ValueError(f"{path}: the detector spec is empty; cannot rebuild the model")
    detector = build_detector(spec["name"], int(spec["num_classes"]), **dict(spec.get("kwargs") or {}))
    detector.load_state_dict(student_weights(state, prefix), strict=True)
    return detector, {"detector": spec, "class_names": class_names, "imgsz": imgsz}


def student_weights(state: Mapping[str, torch.Tensor], prefix: str = STUDENT_PREFIX) -> dict[str, torch.Tensor]:
    """The detector's own weights from a DetectionModule state dict (``student.*``; connectors dropped)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def recipe_for_init(model_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """``model.recipe``, with ``optimizer.lr`` replaced by ``optimizer.scratch_lr`` when the detector starts
    from random init (``weights: null``) and the recipe names one.

    The YOLOv6 recipes are the reference *fine-tuning* recipe (the paper fine-tunes COCO weights); from random
    init its lr0 0.0032 barely moves a detector in a CPU-sized run, so random init takes the lr0 of the
    reference from-scratch configs (0.02 for n, 0.01 for s/m/l), scaled by batch like lr0.
    """
    model_cfg = to_plain(model_cfg)
    recipe = model_cfg.get("recipe")
    if not recipe:
        return recipe
    optimizer = dict(recipe.get("optimizer") or {})
    scratch_lr = optimizer.get("scratch_lr")
    if scratch_lr is not None and not model_cfg.get("weights"):
        log.info("random init: lr0 %s (optimizer.scratch_lr) instead of the fine-tuning lr0 %s",
                 scratch_lr, optimizer.get("lr"))
        optimizer["lr"] = scratch_lr
    return {**recipe, "optimizer": optimizer}


def prepare(datamodule: pl.LightningDataModule) -> tuple[int, list[str], int | None]:
    """Generate/check the data once here, so the class count and names are known before the model exists."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    if callable(getattr(datamodule, "require_val_split", None)):
        datamodule.require_val_split()
    class_names = list(getattr(datamodule, "class_names", []) or [])
    num_classes = int(getattr(datamodule, "num_classes", 0) or len(class_names))
    if num_classes < 1:
        raise ValueError(f"{type(datamodule).__name__} reports no classes (num_classes / class_names)")
    train_dataset = getattr(datamodule, "train_dataset", None)
    return num_classes, class_names, len(train_dataset) if train_dataset is not None else None


# -- the task ------------------------------------------------------------------------------------------
@register_task
class DetectTask(Task):
    name = "detect"
    metric_columns = tuple(FIVE_METRICS)
    display_names = DISPLAY_NAMES
    artifact_name = DETECTOR_FILE

    # -- config reading ---------------------------------------------------------------------------------
    @staticmethod
    def combo(cfg: DictConfig) -> str:
        return str(OmegaConf.select(cfg, "preprocess.combo", default="none"))

    @staticmethod
    def kd_teacher_view(cfg: DictConfig) -> str:
        return str(OmegaConf.select(cfg, "kd.teacher_view") or "preprocessed")

    def model_config(self, cfg: DictConfig, role: str) -> dict[str, Any]:
        """The model of ``role``: ``teacher.model`` for the teacher when one is chosen, else ``model``."""
        teacher_model = to_plain(OmegaConf.select(cfg, "teacher.model"))
        if role == "teacher" and isinstance(teacher_model, Mapping) and teacher_model.get("name"):
            return dict(teacher_model)
        return dict(to_plain(cfg.model))

    def recipe(self, cfg: DictConfig, role: str) -> dict[str, Any] | None:
        """The role's model recipe as configured (the engine reads its nominal batch; build_module applies
        the random-init learning rate)."""
        return self.model_config(cfg, role).get("recipe")

    def teacher_views(self, cfg: DictConfig) -> tuple[str, str]:
        """``(train view, validation view)`` of the teacher."""
        if self.combo(cfg) == "none" or self.kd_teacher_view(cfg) == "original":
            return "original", "original"
        return "preprocessed", str(OmegaConf.select(cfg, "eval_view") or "preprocessed")

    def views(self, cfg: DictConfig, role: str) -> tuple[str, str]:
        return self.teacher_views(cfg) if role == "teacher" else ("original", "original")

    def distills(self, cfg: DictConfig) -> bool:
        return self.needs_teacher(cfg) and float(cfg.alpha) > 0

    # -- Task interface ---------------------------------------------------------------------------------
    def require_combo(self, cfg: DictConfig, why: str) -> None:
        require_combo(cfg, why)

    def validate(self, cfg: DictConfig) -> None:
        check_detect(cfg)

    def needs_teacher(self, cfg: DictConfig) -> bool:
        return str(OmegaConf.select(cfg, "kd.name") or "none") != "none"

    def teacher_spec(self, cfg: DictConfig) -> dict[str, Any] | None:
        """Every setting that shapes the teacher (its cache key): model and recipe, data and its version,
        the views it learns from / is selected on (combo and parameters), epochs, imgsz, batch, seed,
        trainer and callbacks."""
        if not self.needs_teacher(cfg):
            return None
        return self.fit_spec(cfg, "teacher", int(cfg.teacher.epochs), OmegaConf.select(cfg, "teacher.seed"))

    def fit_spec(self, cfg: DictConfig, role: str, epochs: int, seed: Any = None) -> dict[str, Any]:
        """The settings that shape one cached fit of ``role`` (a teacher, a pretraining)."""
        view, val_view = self.views(cfg, role)
        data = to_plain(cfg.data)
        data_version: dict[str, Any] = {}
        root = data.get("root") if isinstance(data, dict) else None
        if root and Path(str(root)).is_dir():
            data_version["fingerprint"] = dataset_fingerprint(str(root))
        else:
            from fgkd.data.synth import synthpipes

            data_version["synthpipes"] = synthpipes.GENERATOR_VERSION
        trainer = {k: v for k, v in (to_plain(cfg.trainer) or {}).items() if k not in _NON_SHAPING_TRAINER_KEYS}
        callbacks = {k: v for k, v in (to_plain(cfg.get("callbacks")) or {}).items()  # checkpointing shapes nothing
                     if not str((v or {}).get("_target_", "")).endswith("ModelCheckpoint")}
        return {
            "fgkd": fgkd.__version__,
            "metrics_schema": METRICS_SCHEMA,
            "model": self.model_config(cfg, role),
            "data": data,
            "data_version": data_version,
            "view": view,
            "val_view": val_view,
            "preprocess": to_plain(cfg.preprocess) if "preprocessed" in (view, val_view) else {"combo": "none"},
            "epochs": int(epochs),
            "imgsz": int(cfg.imgsz),
            "batch_size": int(cfg.batch_size),
            "seed": cfg.get("seed") if seed is None else seed,
            "trainer": trainer,
            "callbacks": callbacks,
        }

    # -- synthetic pretraining (pretrain=synthpipes): the stand-in for the paper's COCO weights ----------------
    def pretraining(self, cfg: DictConfig, role: str) -> tuple[DictConfig, dict[str, Any], str] | None:
        pre = to_plain(OmegaConf.select(cfg, "pretrain")) or {}
        if str(pre.get("name", "none")) == "none":
            return None
        model = self.model_config(cfg, role)
        if model.get("weights"):
            return None  # the user's weights win
        part = cfg.copy()
        with read_write(part), open_dict(part):
            # no test split in the pretraining set (its scenes are disjoint from the evaluation data anyway), so
            # one pretrained model serves evaluation data with and without a held-out test split
            part.data.synthpipes = {**to_plain(cfg.data.synthpipes), "test_fraction": 0.0, **dict(pre.get("data") or {})}
            part.model = {**model, "weights": None}
            part.teacher.model = None
            part.teacher.ckpt = None
            part.kd = {"name": "none"}
            part.preprocess = {**to_plain(cfg.preprocess), "combo": "none"}
            part.stage = "full"
            part.eval_view = "original"
            part.epochs = int(pre["epochs"])
            part.seed = int(pre.get("seed", 0))
            part.pretrain = {"name": "none"}
        spec = {"pretrain": pre, **self.fit_spec(part, "base", int(pre["epochs"]), int(pre.get("seed", 0)))}
        return part, spec, f"pretrain-{model['name']}"

    def with_pretrained(self, cfg: DictConfig, role: str, weights: Path) -> DictConfig:
        out = cfg.copy()
        key = "teacher.model.weights" if role == "teacher" and self._own_teacher_model(cfg) else "model.weights"
        with read_write(out), open_dict(out):
            OmegaConf.update(out, key, str(weights), merge=False)
        return out

    @staticmethod
    def _own_teacher_model(cfg: DictConfig) -> bool:
        teacher_model = to_plain(OmegaConf.select(cfg, "teacher.model"))
        return isinstance(teacher_model, Mapping) and bool(teacher_model.get("name"))

    def teacher_label(self, cfg: DictConfig) -> str:
        view, _ = self.teacher_views(cfg)
        return f"{self.model_config(cfg, 'teacher')['name']}-{self.combo(cfg) if view == 'preprocessed' else 'original'}"

    def build_datamodule(self, cfg: DictConfig, role: str) -> pl.LightningDataModule:
        """``cfg.data`` for one fit of ``role``: X_M in the batches (``teacher_images``, from ``cfg.preprocess``)
        when the fit trains or validates on it or its teacher sees it; the recipe's augmentation under data's."""
        data_cfg = cfg.data
        if OmegaConf.select(data_cfg, "_target_") is None:
            raise ConfigError("config group data/ has no _target_ (expected fgkd.data.datamodule.DetectionDataModule)")
        needs_xm = "preprocessed" in self.views(cfg, role) or (
            role == "student" and self.distills(cfg) and self.kd_teacher_view(cfg) == "preprocessed")
        overrides: dict[str, Any] = {}
        if needs_xm:
            self.require_combo(cfg, f"this {role} fit")
            overrides["preprocess"] = to_plain(cfg.preprocess)
            overrides["teacher_view"] = "preprocessed"
        elif OmegaConf.select(data_cfg, "preprocess") is None:
            overrides["teacher_view"] = None
        recipe = self.model_config(cfg, role).get("recipe") or {}
        augment = to_plain(OmegaConf.select(data_cfg, "augment"))
        if isinstance(augment, Mapping) or augment is None:
            # data.augment keys (a data preset, the command line) over the recipe's; none set: the recipe's
            chosen = {k: v for k, v in (augment or {}).items() if v is not None}
            overrides["augment"] = {**dict(recipe.get("augment") or {}), **chosen}
        close_mosaic = OmegaConf.select(data_cfg, "close_mosaic")
        overrides["close_mosaic"] = int(close_mosaic if close_mosaic is not None else recipe.get("close_mosaic") or 0)
        data = {k: v for k, v in to_plain(data_cfg).items() if k != "task"}  # `task` describes the config itself
        data.update(overrides)  # whole values replaced, not merged: augment above is already complete
        return instantiate(data)

    def build_module(self, cfg: DictConfig, role: str, datamodule: pl.LightningDataModule, *,
                     teacher: Any = None, history_path: str | os.PathLike[str] | None = None) -> DetectionModule:
        num_classes, class_names, dataset_size = prepare(datamodule)
        model_cfg = self.model_config(cfg, role)
        student, spec = build_student(model_cfg, num_classes)
        view, val_view = self.views(cfg, role)
        kd_args: dict[str, Any] = {"kd": "none"}
        alpha = 0.0
        if role == "student" and teacher is not None:
            if int(getattr(teacher, "num_classes", num_classes)) != num_classes:
                raise ValueError(f"the teacher has {teacher.num_classes} classes but the data has {num_classes}; "
                                 "distil from a teacher trained on the same classes")
            kd = to_plain(cfg.kd) or {}
            kd_args = {"kd": kd.get("name", "none"), "kd_params": dict(kd.get("params") or {}),
                       "taps": kd.get("taps"), "teacher_taps": kd.get("teacher_taps"), "layers": kd.get("layers"),
                       "teacher_view": self.kd_teacher_view(cfg), "fuse_teacher": bool(kd.get("fuse_teacher", False))}
            alpha = float(cfg.alpha)
            if type(teacher) is not type(student) or getattr(teacher, "taps", None) != student.taps:
                print(f"[detect] heterogeneous pair: teacher {type(teacher).__name__} → student {model_cfg['name']} "
                      "(1×1 connectors map student channels to the teacher's where they differ)", flush=True)
        module = DetectionModule(
            student, detector_spec=spec, class_names=class_names, recipe=recipe_for_init(model_cfg),
            batch_size=int(cfg.batch_size), dataset_size=dataset_size, teacher=teacher, alpha=alpha,
            view=view, val_view=val_view, history_path=history_path, **kd_args,
        )
        module.nonfinite = NonFiniteLossGuard(int(cfg.get("max_nonfinite_skips") or 0))
        return module

    def save_artifact(self, cfg: DictConfig, role: str, module: pl.LightningModule, best_ckpt: Path | None,
                      output_dir: Path) -> Path:
        """``detector.pt`` with the best checkpoint's student weights (the EMA weights, saved by
        ``YoloEMA.on_save_checkpoint``), or the module's current weights when there is no best checkpoint."""
        spec, class_names = module.hparams["detector_spec"], module.class_names
        detector = module.student
        if best_ckpt is not None:
            state = torch.load(best_ckpt, map_location="cpu", weights_only=False)["state_dict"]
            detector, _ = build_student({**self.model_config(cfg, role), "weights": None}, int(spec["num_classes"]))
            detector.load_state_dict(student_weights(state))
        path = save_detector(output_dir / DETECTOR_FILE, detector, spec, class_names, imgsz=int(cfg.imgsz))
        self._write_figures(module, detector, output_dir, role)
        return path

    @staticmethod
    def _write_figures(module: pl.LightningModule, detector: Detector, output_dir: Path, role: str) -> None:
        """PR curves, confusion matrix and validation images of the exported model (fgkd.metrics.detection_figures)."""
        datamodule = module.trainer.datamodule if module._trainer is not None else None
        if datamodule is None:
            return
        from fgkd.metrics.detection_figures import collect_predictions, write_detection_figures

        try:
            was_training = detector.training
            detector.to(module.device).eval()
            preds, targets, shown = collect_predictions(detector, datamodule.val_dataloader(),
                                                        VIEW_KEYS[module.val_view], module.postprocess_kwargs)
            write_detection_figures(output_dir, preds, targets, shown, module.class_names,
                                    title=f"({role}, {module.val_view})")
            detector.train(was_training)
        except Exception as err:  # noqa: BLE001 - a picture must never fail a finished run
            logging.getLogger(__name__).warning("could not draw the detection figures in %s: %s", output_dir, err)

    def held_out_test(self, cfg: DictConfig, role: str, module: pl.LightningModule,
                      artifact_path: Path) -> dict[str, Any] | None:
        """The exported detector on the data's ``test`` split (none: None), through the fit's validation view and,
        for a model validated on X_M, also on the original images (Tables 1-2 side by side). ``metrics``: the
        first view's five columns; the epoch was chosen on val, so these are the numbers to report."""
        datamodule = module.trainer.datamodule if module._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "has_split") or not datamodule.has_split("test"):
            return None
        from fgkd.metrics.detection_figures import collect_predictions

        detector, _ = load_detector(artifact_path, map_location=module.device)
        detector.eval()
        views = [module.val_view] + (["original"] if module.val_view == "preprocessed" else [])
        loader = datamodule.test_dataloader()
        report: dict[str, Any] = {"split": "test", "selected_on": "val", "views": {}}
        with torch.no_grad():
            for view in views:
                preds, targets, _ = collect_predictions(detector, loader, VIEW_KEYS[view], module.postprocess_kwargs,
                                                        keep_images=0)
                metric = build_map_metric()
                metric.update(preds, targets)
                scalars = summarize(metric.compute(), module.class_names)
                metrics, per_class = self.summarize(scalars)
                report["views"][view] = {"metrics": metrics, "per_class": per_class}
        report.update(images=len(targets), boxes=int(sum(len(t["labels"]) for t in targets)),
                      view=views[0], metrics=report["views"][views[0]]["metrics"])
        print(f"[{self.name}] {role} on the held-out test split ({report['images']} images, {report['boxes']} boxes): "
              + ", ".join(f"{view} mAP {entry['metrics']['map']:.3f}" for view, entry in report["views"].items()),
              flush=True)
        return report

    def load_artifact(self, path: str | os.PathLike[str]) -> tuple[Detector, dict[str, Any]]:
        return load_detector(path)

    def summarize(self, best: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        metrics, _ = super().summarize(best)
        per_class = {k[len(PER_CLASS_PREFIX):]: float(v) for k, v in best.items() if k.startswith(PER_CLASS_PREFIX)}
        return metrics, per_class

    def run_info(self, cfg: DictConfig, role: str) -> dict[str, Any]:
        view, val_view = self.views(cfg, role)
        student = role == "student"
        return {
            "model": self.model_config(cfg, role)["name"],
            "preprocess": self.combo(cfg),
            "kd": str(cfg.kd.name) if student else "none",
            "alpha": float(cfg.alpha) if student else 0.0,
            "kd_teacher_view": self.kd_teacher_view(cfg) if student else None,
            "view": view,
            "val_view": val_view,
            "evaluated_on": "original images, no mask" if val_view == "original" else "preprocessed images X_M",
        }

    def evaluate(self, cfg: DictConfig, detector: Detector, *, view: str = "original",
                 class_names: list[str] | None = None) -> dict[str, float]:
        """Validate ``detector`` on ``cfg.data``'s validation split seen through ``view``; ``val/...`` scalars."""
        role = "teacher" if view == "preprocessed" else "base"
        datamodule = self.build_datamodule(cfg, role)
        _, names, _ = prepare(datamodule)
        module = DetectionModule(detector, class_names=class_names or names, view=view, val_view=view)
        return validate_once(cfg, module, datamodule)
