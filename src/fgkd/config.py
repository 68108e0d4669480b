"""Checks on the composed Hydra config, run before anything is built (train.py calls :func:`validate` first).

Hydra already rejects unknown *group options* (``model=yolov9`` lists the files in ``conf/model``); this
module checks the *values* inside the composed config — registry names, enumerations, ranges — and fails
with a :class:`ConfigError` that names the key, the bad value, the allowed values and a fix. It returns a
small typed :class:`RunSettings` so the code downstream reads typed fields, not raw strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

STAGES = ("full", "teacher", "student")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile modes (compile=true: default)


class ConfigError(ValueError):
    """A bad value in the composed config; the message names the key and the allowed values."""


def to_plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, scalars; interpolations resolved); anything else unchanged."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


@dataclass(frozen=True)
class RunSettings:
    """The typed top-level knobs of one run (``conf/train.yaml``)."""

    task: str
    stage: str
    model: str
    kd: str
    preprocess: str
    alpha: float
    imgsz: int
    batch_size: int
    epochs: int
    seed: int | None
    eval_view: str
    teacher_view: str
    teacher_ckpt: str | None
    teacher_epochs: int
    teacher_model: str

    @property
    def label(self) -> str:
        """A short name of the run for printed tables (``yolov8n full kd=cs a=0.5``; anomaly: ``rd2t``)."""
        if self.task != "detect":
            return self.model
        return f"{self.model} {self.stage} kd={self.kd}" + (f" a={self.alpha:g}" if self.kd != "none" else "")


_REQUIRED: Any = object()


def _get(cfg: DictConfig, key: str, default: Any = _REQUIRED) -> Any:
    """``cfg.<key>``; a missing/null required key raises a ConfigError, an optional one gives ``default``."""
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if value is None:
        if default is _REQUIRED:
            raise ConfigError(f"config key {key!r} is missing or null; it is required (see conf/train.yaml)")
        return default
    return value


def _choice(key: str, value: Any, allowed: list[str] | tuple[str, ...], hint: str | None = None) -> str:
    if value not in allowed:
        fix = hint or f"python train.py {key}={allowed[0]}"
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)} (e.g. `{fix}`)")
    return str(value)


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def group_options(group: str, task: str | None = None) -> list[str]:
    """The options of config group ``group`` (``conf/<group>/*.yaml``), only those declaring ``task`` if given."""
    import yaml

    from fgkd.paths import project_root

    options = []
    for path in sorted((project_root() / "conf" / group).glob("*.yaml")):
        if path.stem.startswith("_"):
            continue
        if task is not None:
            declared = (yaml.safe_load(path.read_text()) or {}).get("task")
            if declared is None:  # declared in a base file of the group (defaults: [_base])
                base = path.parent / "_base.yaml"
                declared = (yaml.safe_load(base.read_text()) or {}).get("task") if base.is_file() else None
            if declared != task:
                continue
        options.append(path.stem)
    return options


def _check_task_of(cfg: DictConfig, group: str, key: str, task: str) -> None:
    """``<key>.task`` (the task a model/data option declares) must be the run's ``task``."""
    node = OmegaConf.select(cfg, key)
    if isinstance(node, str):
        raise ConfigError(f"{key}={node!r} is a plain value; choose a config of the {group} group instead: "
                          f"`python train.py {group}@{key}={node}`")
    if node is None:
        return
    declared = OmegaConf.select(cfg, f"{key}.task")
    if declared != task:
        options = group_options(group, task)
        raise ConfigError(f"{key} is a {declared or 'task-less'} config but task={task}; the {group} options "
                          f"for task={task} are: {', '.join(options)} (e.g. `python train.py {group}="
                          f"{options[0] if options else '...'}`)")


def validate(cfg: DictConfig) -> RunSettings:
    """Check the composed config; raise :class:`ConfigError` naming the first bad key."""
    from fgkd.tasks.checks import SPECS

    task_name = _choice("task", _get(cfg, "task"), sorted(SPECS))
    task = SPECS[task_name]
    _check_task_of(cfg, "model", "model", task_name)
    _check_task_of(cfg, "data", "data", task_name)
    teacher_model = OmegaConf.select(cfg, "teacher.model")
    if isinstance(teacher_model, str) or (teacher_model is not None and OmegaConf.select(cfg, "teacher.model.name")):
        _check_task_of(cfg, "model", "teacher.model", task_name)
    optimized = str(_get(cfg, "optimized_metric", "val/map"))
    allowed_metrics = [f"val/{column}" for column in task.metric_columns]
    _choice("optimized_metric", optimized, allowed_metrics)
    for column in _get(cfg, "metrics", list(task.metric_columns)):
        _choice("metrics", column, list(task.metric_columns), hint=f"python train.py task={task_name}")
    stage = _choice("stage", _get(cfg, "stage"), STAGES)
    eval_view = str(_get(cfg, "eval_view", "original"))  # views: checked by the task (fgkd.tasks.detect)

    model = _get(cfg, "model.name")
    kd = str(_get(cfg, "kd.name", "none"))
    teacher_view = str(_get(cfg, "kd.teacher_view", "preprocessed"))
    preprocess = str(_get(cfg, "preprocess.combo", "none"))
    alpha = _get(cfg, "alpha", 0.0)
    imgsz = _int("imgsz", _get(cfg, "imgsz"), 32)
    if imgsz % 32:
        raise ConfigError(f"imgsz must be a multiple of 32 (the detectors' largest stride), got {imgsz}; e.g. imgsz={32 * max(1, round(imgsz / 32))}")
    batch_size = _int("batch_size", _get(cfg, "batch_size"), 1)
    epochs = _int("epochs", _get(cfg, "epochs"), 1)
    _int("num_workers", _get(cfg, "num_workers", 0), 0)
    seed = _get(cfg, "seed", None)
    if seed is not None:
        _int("seed", seed, 0)
    teacher_ckpt = _get(cfg, "teacher.ckpt", None)
    teacher_epochs = _int("teacher.epochs", _get(cfg, "teacher.epochs", epochs), 1)

    channels_last = _get(cfg, "channels_last", False)
    if not isinstance(channels_last, bool):
        raise ConfigError(f"channels_last must be true or false, got {channels_last!r}")
    compile_mode = _get(cfg, "compile", False)
    if not isinstance(compile_mode, bool):
        _choice("compile", compile_mode, COMPILE_MODES, hint="python train.py compile=true")

    resume = _get(cfg, "ckpt_path", None)
    if resume is not None and str(resume) != "auto" and not Path(str(resume)).expanduser().is_file():
        raise ConfigError(f"ckpt_path={resume!r}: file not found; give a run's checkpoints/last.ckpt to resume, "
                          "or ckpt_path=auto (resume the run folder's own last.ckpt if present)")
    task.check(cfg)  # the task's own keys (fgkd.tasks.checks: model, kd, preprocess, alpha, paths, recipe)
    teacher_name = OmegaConf.select(cfg, "teacher.model.name") or str(model)
    return RunSettings(
        task=task_name, teacher_model=str(teacher_name), stage=stage, model=str(model), kd=str(kd), preprocess=str(preprocess), alpha=float(alpha), imgsz=imgsz,
        batch_size=batch_size, epochs=epochs, seed=seed, eval_view=eval_view, teacher_view=teacher_view,
        teacher_ckpt=str(teacher_ckpt) if teacher_ckpt is not None else None, teacher_epochs=teacher_epochs,
    )


def validate_predict(cfg: DictConfig) -> None:
    """``predict.py``'s keys, checked before any heavy import: the model file and the source exist, sizes and
    thresholds are in range."""
    for key in ("ckpt", "source"):
        if not cfg.get(key):
            raise ConfigError(f"predict.py needs {key}=… (e.g. `python predict.py "
                              "ckpt=outputs/runs/<run>/detector.pt source=imgs/`)")
    ckpt = Path(str(cfg.ckpt)).expanduser()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt={cfg.ckpt}: file not found; give a detector.pt / anomaly.pt of a run (or its "
                          "checkpoints/last.ckpt, or the .onnx file python -m fgkd.export wrote)")
    if not Path(str(cfg.source)).expanduser().exists():
        raise ConfigError(f"source={cfg.source}: no such file or folder; give an image, a folder, a .txt list or a video")
    imgsz = cfg.get("imgsz")
    if imgsz is not None and (isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32):
        raise ConfigError(f"imgsz={imgsz!r}: a multiple of 32 (or null: the size the model was trained at)")
    for key in ("conf", "iou"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{key}={value!r}: a number in [0, 1]")
    for key in ("batch", "vid_stride", "max_det"):
        value = cfg.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r}: a whole number >= 1")
