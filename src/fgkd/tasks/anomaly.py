"""The anomaly task: reverse distillation (``rd``, ``rd2t``, ``bsdrd``) per category, evaluated on the labelled test split.

Every fit is a ``base`` fit (the frozen encoders are part of the model, not a trained teacher stage).
``data.category=all`` expands into one fit per category (``<run>/<category>/``, each resumable, a finished one
skipped) and one ``metrics.json`` with the class mean (the reported metrics), the mean of the texture and
object group means (paper 001's "Average" rows, anomaly_spec.md §4.4) and every category's values.

Artifact ``anomaly.pt``: ``{"task": "anomaly", "model": {name, options}, "state_dict", "imgsz", "data": {layout,
category}, "sigma"}`` (:func:`save_anomaly_model` / :func:`load_anomaly_model`); Lightning checkpoints load too.
Pictures of the last epoch (``fgkd.metrics.anomaly_figures``): ``maps.png`` and ``score_histogram.png``.
"""

from __future__ import annotations

import math
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
from fgkd.data.anomaly_datamodule import AnomalyDataModule
from fgkd.io import atomic_save
from fgkd.lit.anomaly import AnomalyModule
from fgkd.lit.guards import NonFiniteLossGuard, check_finite_state
from fgkd.metrics.anomaly import adaptive_thresholds
from fgkd.models.registry import build_model
from fgkd.options import ANOMALY_DISPLAY_NAMES, ANOMALY_METRICS
from fgkd.tasks.base import Task, register_task
from fgkd.tasks.checks import check_anomaly

ARTIFACT_FILE = "anomaly.pt"
ALL_CATEGORIES = "all"
BASELINE_LABEL = "trivial baseline (distance to the mean train image)"
#: model-config keys that describe the config, not constructor options
_MODEL_META_KEYS = ("name", "family", "task", "recipe", "weights")
_MODULE_PREFIX = "model."


def model_options(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dict(to_plain(model_cfg)).items() if k not in _MODEL_META_KEYS}


def save_anomaly_model(path: str | os.PathLike[str], model: torch.nn.Module, name: str, options: Mapping[str, Any],
                       info: Mapping[str, Any]) -> Path:
    check_finite_state(model.state_dict(), f"anomaly model file {path}")
    payload = {"task": "anomaly", "fgkd": fgkd.__version__, "model": {"name": name, "options": dict(options)},
               "state_dict": model.state_dict(), **dict(info)}
    return atomic_save(path, lambda handle: torch.save(payload, handle))


def load_anomaly_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                       ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, info)`` from ``anomaly.pt`` or an AnomalyModule checkpoint (``info``: imgsz, data, model spec)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"anomaly model file not found: {path}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if payload.get("task") == "anomaly":
        spec, state, info = payload["model"], payload["state_dict"], {k: v for k, v in payload.items() if k != "state_dict"}
    elif "anomaly_model" in payload.get("hyper_parameters", {}):
        hparams = payload["hyper_parameters"]
        spec, info = hparams["anomaly_model"], dict(hparams.get("anomaly_info") or {})
        state = {k[len(_MODULE_PREFIX):]: v for k, v in payload["state_dict"].items() if k.startswith(_MODULE_PREFIX)}
    else:
        raise ValueError(f"{path}: neither an fgkd anomaly.pt nor an anomaly-task checkpoint")
    options = dict(spec.get("options") or {})
    # the weights are in the file: do not re-read (or warn about) the encoders' ImageNet files
    for key in ("encoder", "encoder2"):
        if isinstance(options.get(key), Mapping):
            options[key] = {**options[key], "weights": None}
    import warnings

    from fgkd.models.anomaly.components.encoder import RandomEncoderWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomEncoderWarning)
        model = build_model(spec["name"], 1, **options)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, {**info, "model": spec}


def group_means(per_category: Mapping[str, Mapping[str, float]], groups: Mapping[str, list[str]] | None
                ) -> dict[str, dict[str, float]]:
    """``{group: {column: mean}}`` over the categories of each group present, plus ``mean_of_groups``."""
    out: dict[str, dict[str, float]] = {}
    for group, names in (groups or {}).items():
        present = [per_category[n] for n in names if n in per_category]
        if present:
            out[group] = {c: _mean([p.get(c, math.nan) for p in present]) for c in ANOMALY_METRICS}
    if len(out) >= 2:
        out["mean_of_groups"] = {c: _mean([g[c] for g in out.values()]) for c in ANOMALY_METRICS}
    return out


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


@register_task
class AnomalyTask(Task):
    name = "anomaly"
    metric_columns = tuple(ANOMALY_METRICS)
    display_names = ANOMALY_DISPLAY_NAMES
    artifact_name = ARTIFACT_FILE

    # -- config -------------------------------------------------------------------------------------------
    def validate(self, cfg: DictConfig) -> None:
        check_anomaly(cfg)

    def needs_teacher(self, cfg: DictConfig) -> bool:
        return False

    def teacher_spec(self, cfg: DictConfig) -> dict[str, Any] | None:
        return None

    def recipe(self, cfg: DictConfig, role: str) -> Mapping[str, Any] | None:
        return None  # no nominal batch: every batch is an optimizer step

    # -- one fit ------------------------------------------------------------------------------------------
    def build_datamodule(self, cfg: DictConfig, role: str) -> AnomalyDataModule:
        # `task` and `groups` describe the config (its task, the texture/object split), not the datamodule
        data = {k: v for k, v in to_plain(cfg.data).items() if k not in ("task", "groups")}
        if str(data.get("category")) == ALL_CATEGORIES:
            raise ConfigError("data.category=all is a run of one fit per category (fgkd.pipeline expands it)")
        return instantiate(data)

    def build_module(self, cfg: DictConfig, role: str, datamodule: pl.LightningDataModule, *,
                     teacher: Any = None, history_path: str | os.PathLike[str] | None = None) -> AnomalyModule:
        model_cfg = to_plain(cfg.model)
        model = build_model(model_cfg["name"], 1, weights=model_cfg.get("weights"), **model_options(model_cfg))
        datamodule.prepare_data()
        datamodule.setup("fit")
        recipe = dict(model_cfg.get("recipe") or {})
        evaluation = to_plain(OmegaConf.select(cfg, "evaluation")) or {}
        module = AnomalyModule(model, recipe.get("optimizer"), recipe.get("scheduler"),
                               mean_image=datamodule.mean_train_image(),
                               fpr_limit=float(evaluation.get("fpr_limit", 0.3)),
                               pro_rd4ad=bool(evaluation.get("pro_rd4ad", False)), history_path=history_path)
        module.nonfinite = NonFiniteLossGuard(int(cfg.get("max_nonfinite_skips") or 0))
        module.save_hyperparameters({"anomaly_model": {"name": model_cfg["name"], "options": model_options(model_cfg)},
                                     "anomaly_info": self._info(cfg)})
        return module

    def _info(self, cfg: DictConfig) -> dict[str, Any]:
        return {"imgsz": int(cfg.imgsz), "data": {"layout": str(cfg.data.layout), "category": str(cfg.data.category),
                                                  "resize_mode": str(OmegaConf.select(cfg, "data.resize_mode",
                                                                                      default="square"))},
                "sigma": float(cfg.model.sigma)}

    def save_artifact(self, cfg: DictConfig, role: str, module: pl.LightningModule, best_ckpt: Path | None,
                      output_dir: Path) -> Path:
        """``anomaly.pt`` of the last epoch (the reported one) and the pictures of its test maps."""
        model_cfg = to_plain(cfg.model)
        outputs = getattr(module, "last_outputs", None)
        info = self._info(cfg)
        if outputs:
            # stored with the model for predict.py: F1-optimal on the evaluated split (the labelled test split:
            # these layouts have no separate validation split), so a threshold to start from, not a tuned one
            found = adaptive_thresholds(outputs["maps"], outputs["masks"], outputs["labels"])
            info.update(threshold=found["image"], pixel_threshold=found["pixel"],
                        thresholds={**found, "chosen_on": "the evaluated (test) split, F1-optimal"})
        path = save_anomaly_model(output_dir / ARTIFACT_FILE, module.model, model_cfg["name"],
                                  model_options(model_cfg), info)
        datamodule = module.trainer.datamodule if module._trainer is not None else None
        if outputs and isinstance(datamodule, AnomalyDataModule):
            from fgkd.metrics.anomaly_figures import write_figures

            write_figures(output_dir, outputs, datamodule.test_set, title=f"{model_cfg['name']} · {cfg.data.category}")
        return path

    def load_artifact(self, path: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
        return load_anomaly_model(path)

    # -- results ------------------------------------------------------------------------------------------
    def extras(self, best: Mapping[str, Any]) -> dict[str, Any]:
        baseline = {c: float(best.get(f"baseline_{c}", math.nan)) for c in self.metric_columns}
        extras: dict[str, Any] = {"baseline": baseline, "rows": {BASELINE_LABEL: baseline}}
        if "pro_rd4ad" in best:
            extras["pro_rd4ad"] = float(best["pro_rd4ad"])
        return extras

    def run_info(self, cfg: DictConfig, role: str) -> dict[str, Any]:
        model = to_plain(cfg.model)
        encoders = [model.get("encoder"), model.get("encoder2")]
        return {"model": model["name"], "layout": str(cfg.data.layout), "category": str(cfg.data.category),
                "imgsz": int(cfg.imgsz), "epochs": int(cfg.epochs), "loss": model.get("loss"),
                "encoders": [e.get("name") if isinstance(e, Mapping) else e for e in encoders if e],
                "imagenet_weights": all(isinstance(e, Mapping) and e.get("weights") for e in encoders if e),
                "evaluated_on": f"test split at {int(cfg.imgsz)} px; the last epoch (no epoch chosen on the test set)"}

    # -- category=all ---------------------------------------------------------------------------------------
    def categories(self, cfg: DictConfig) -> list[str]:
        data = to_plain(cfg.data)
        if data["layout"] == "synthtex":
            return list((data.get("synthtex") or {}).get("categories") or [])
        if data["layout"] == "synthtiles":
            return ["mtd"]
        from fgkd.data.anomaly_datamodule import list_layout_categories

        found = list_layout_categories(data["layout"], data["root"])
        if not found:
            raise ConfigError(f"data.root={data['root']}: no {data['layout']} categories found (folders with "
                              f"train/{'ok' if data['layout'] == 'btad' else 'good'})")
        return found

    def expand(self, cfg: DictConfig) -> list[tuple[str, DictConfig]]:
        if str(OmegaConf.select(cfg, "data.category")) != ALL_CATEGORIES:
            return []
        parts = []
        for category in self.categories(cfg):
            part = cfg.copy()
            with read_write(part), open_dict(part):
                part.data.category = category
            parts.append((category, part))
        return parts

    def aggregate(self, cfg: DictConfig, parts: Mapping[str, Mapping[str, Any]]
                  ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
        per_category = {name: dict(p["metrics"]) for name, p in parts.items()}
        baselines = {name: dict((p.get("extras") or {}).get("baseline") or {}) for name, p in parts.items()}
        metrics = {c: _mean([m.get(c, math.nan) for m in per_category.values()]) for c in self.metric_columns}
        baseline = {c: _mean([b.get(c, math.nan) for b in baselines.values()]) for c in self.metric_columns}
        groups = group_means(per_category, to_plain(OmegaConf.select(cfg, "data.groups")))
        rows: dict[str, Any] = {name: m for name, m in per_category.items()}
        if "mean_of_groups" in groups:
            rows["mean of texture/object means (paper 001 'Average')"] = groups["mean_of_groups"]
        rows[BASELINE_LABEL + f", mean of {len(baselines)}"] = baseline
        extras = {"baseline": baseline, "baseline_per_category": baselines, "group_means": groups, "rows": rows,
                  "categories": list(per_category)}
        return metrics, per_category, extras

