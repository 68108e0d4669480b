"""Each task's config checks and metric columns, importable without torch (``fgkd.config.validate`` runs them
before any heavy import, so a bad value fails in about a second, before a folder, lock or cache entry exists).

Everything that the config and the file system can tell is checked here: names against the config groups
(which the tests keep equal to the registries), enumerations from :mod:`fgkd.options`, ranges, and that the
paths given exist (data roots, checkpoints, weight files). The task classes (``fgkd.tasks.detect``,
``fgkd.tasks.anomaly``) call the same functions from their ``validate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fgkd.config import ConfigError, _choice, _get, group_options, to_plain
from fgkd.options import (
    ANOMALY_DISPLAY_NAMES,
    ANOMALY_LAYOUTS,
    ANOMALY_METRICS,
    COMBOS,
    DISPLAY_NAMES,
    FIVE_METRICS,
    GENERATED_LAYOUTS,
    KD_NAMES,
    RESIZE_MODES,
    VIEWS,
)


def _existing_file(key: str, value: object, what: str) -> None:
    if value and not Path(str(value)).expanduser().is_file():
        raise ConfigError(f"{key}={value}: file not found; give {what}")


# -- detect -----------------------------------------------------------------------------------------------------
def require_combo(cfg: DictConfig, why: str) -> None:
    """The one check that X_M can be built: a preprocessing combo is chosen."""
    if str(OmegaConf.select(cfg, "preprocess.combo", default="none")) == "none":
        raise ConfigError(f"{why} needs the preprocessed view X_M but preprocess=none; choose a combo (e.g. "
                          "preprocess=rb_sf, the paper's best) or use kd.teacher_view=original for classical feature KD")


def check_detect(cfg: DictConfig) -> None:
    """The detection task's keys: model, KD loss, combo, alpha, teacher, recipe, views, paths."""
    known = group_options("model", "detect")
    _choice("model.name", _get(cfg, "model.name"), known, hint=f"python train.py model={known[0]}")
    kd = _get(cfg, "kd.name")
    _choice("kd.name", kd, list(KD_NAMES), hint="python train.py kd=cs")
    _choice("preprocess.combo", _get(cfg, "preprocess.combo"), list(COMBOS), hint="python train.py preprocess=rb_sf")
    alpha = _get(cfg, "alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"alpha must be a finite number >= 0 (the KD weight of Eq. 9), got {alpha!r}")
    teacher_ckpt = _get(cfg, "teacher.ckpt", None)
    _existing_file("teacher.ckpt", teacher_ckpt, "a path to a trained teacher checkpoint (detector.pt or .ckpt)")
    if str(_get(cfg, "stage")) == "student" and kd != "none" and teacher_ckpt is None:
        raise ConfigError(
            "stage=student with a KD loss needs a trained teacher: set teacher.ckpt=<path to teacher .ckpt/.pt> "
            "(or use stage=full to train and cache the teacher first)"
        )
    for key in ("model.weights", "teacher.model.weights"):
        _existing_file(key, OmegaConf.select(cfg, key), "a local weights file (nothing is downloaded)")
    recipe = _get(cfg, "model.recipe", None)
    if recipe is not None:
        from fgkd.lit.recipe import Recipe, RecipeError

        try:
            Recipe.from_config(OmegaConf.to_container(recipe, resolve=True))
        except RecipeError as err:
            raise ConfigError(str(err)) from None
    pretrain = str(OmegaConf.select(cfg, "pretrain.name", default="none"))
    if pretrain != "none" and OmegaConf.select(cfg, "data.synthpipes") is None:
        raise ConfigError(f"pretrain={pretrain} pretrains on SynthPipes' three classes and needs data=synthpipes; "
                          "for real data start from converted COCO weights (model.weights=...) with pretrain=none")
    if pretrain not in ("none", "synthpipes"):
        raise ConfigError(f"pretrain.name={pretrain!r}: choose one of none, synthpipes")
    root = OmegaConf.select(cfg, "data.root")
    if root and not Path(str(root)).expanduser().is_dir():
        raise ConfigError(f"data.root={root} is not a directory. Fix: set data.root to the dataset folder "
                          "(the one holding data.yaml, or images/ and labels/)")
    if kd != "none" and str(cfg.stage) == "full" and not teacher_ckpt:
        if str(OmegaConf.select(cfg, "kd.teacher_view") or "preprocessed") == "preprocessed":
            require_combo(cfg, "kd.teacher_view=preprocessed (the teacher learns on X_M)")
    for view_key in ("eval_view", "kd.teacher_view"):
        value = OmegaConf.select(cfg, view_key)
        if value is not None and value not in VIEWS:
            raise ConfigError(f"{view_key}={value!r} is not allowed; choose one of: {', '.join(VIEWS)}")


# -- anomaly ----------------------------------------------------------------------------------------------------
def check_anomaly(cfg: DictConfig) -> None:
    """The anomaly task's keys: model, layout, root, resize mode, stage, imgsz, weight files."""
    name = OmegaConf.select(cfg, "model.name")
    known = group_options("model", "anomaly")
    if name not in known:
        raise ConfigError(f"model.name={name!r} is not an anomaly model; choose one of: {', '.join(known)} "
                          "(e.g. `python train.py task=anomaly model=rd`)")
    layout = OmegaConf.select(cfg, "data.layout")
    if layout not in ANOMALY_LAYOUTS:
        raise ConfigError(f"data.layout={layout!r}: choose one of {', '.join(ANOMALY_LAYOUTS)} (e.g. data=mvtec)")
    if layout not in GENERATED_LAYOUTS:
        if OmegaConf.is_missing(cfg.data, "root"):
            raise ConfigError(f"data={layout} needs data.root=<folder holding the {layout} categories> "
                              f"(e.g. `python train.py task=anomaly data={layout} data.root=/data/{layout}`)")
        root = Path(str(cfg.data.root)).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data.root={cfg.data.root} is not a directory. Fix: set data.root to the {layout} "
                              "folder (the one holding the category folders; MTD: the one holding MT_Free/)")
    resize = OmegaConf.select(cfg, "data.resize_mode", default="square")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"data.resize_mode={resize!r}: choose one of {', '.join(RESIZE_MODES)}")
    if str(cfg.stage) != "full":
        raise ConfigError(f"stage={cfg.stage}: the anomaly task has one stage (stage=full); its teachers are "
                          "the frozen encoders (model.encoder.weights)")
    if int(cfg.imgsz) % 32:
        raise ConfigError(f"imgsz={cfg.imgsz}: RD needs a multiple of 32 (stride 16 maps, then the 2x OCE)")
    _existing_file("model.weights", OmegaConf.select(cfg, "model.weights"), "a trained anomaly.pt or last.ckpt")
    for key in ("encoder", "encoder2"):
        spec = to_plain(OmegaConf.select(cfg, f"model.{key}"))
        if isinstance(spec, Mapping):
            _existing_file(f"model.{key}.weights", spec.get("weights"),
                           "a torchvision/timm ImageNet state dict (e.g. wide_resnet50_2-95faca4d.pth)")


@dataclass(frozen=True)
class TaskSpec:
    """What validation needs of a task: its columns, headers and checks (the implementation is imported later)."""

    name: str
    metric_columns: tuple[str, ...]
    display_names: Mapping[str, str]
    check: Callable[[DictConfig], None]


SPECS: dict[str, TaskSpec] = {
    "detect": TaskSpec("detect", tuple(FIVE_METRICS), DISPLAY_NAMES, check_detect),
    "anomaly": TaskSpec("anomaly", tuple(ANOMALY_METRICS), ANOMALY_DISPLAY_NAMES, check_anomaly),
}
