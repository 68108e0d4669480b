"""The two-stage FAKD pipeline: teacher (cached) → student with KD → evaluation on original images.

1. The teacher is trained on the preprocessed view X_M (``kd.teacher_view=preprocessed``, the proposed
   method) or on the original images (``original``: classical feature KD of Tables 3–4), unless
   ``teacher.ckpt`` names one. Trained teachers live in the teacher cache (``fgkd.teacher_cache``) under a
   key made of every setting that shapes them, so sweeps that share a teacher train it once.
2. The student (same architecture by default) is trained on original images with
   ``task + α·Σ_k d(F_S^k, F_T^k)`` (Eq. 9).
3. The student is validated on original images only — no mask at inference — and ``metrics.json`` in the
   run folder holds the student's five metrics (``final``), the teacher's, and where everything lives.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import fgkd
from fgkd.io import atomic_write_json
from fgkd.metrics.detection import FIVE_METRICS
from fgkd.teacher_cache import CHECKPOINT_NAME, CacheEntry, TeacherCache
from fgkd.training import METRICS_FILE, FitResult, fit, load_detector

#: trainer / callback keys that do not change what a teacher learns (logging and bookkeeping only)
_NON_SHAPING_TRAINER_KEYS = ("default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                             "max_epochs")  # the teacher's epochs are teacher.epochs, recorded on their own


@dataclass
class PipelineResult:
    """What ``train.py`` prints: the student's metrics plus the teacher's, and where the run lives."""

    metrics: dict[str, float]
    teacher_metrics: dict[str, float]
    output_dir: Path
    metrics_path: Path
    best_ckpt: Path | None
    teacher_path: Path
    teacher_reused: bool
    student: FitResult | None = field(default=None, repr=False)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def teacher_view(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "kd.teacher_view") or "preprocessed")


def dataset_fingerprint(root: str | Path) -> str:
    """A cheap version of a dataset on disk: names, sizes and mtimes of every file under ``root``."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def teacher_spec(cfg: DictConfig) -> dict[str, Any]:
    """Every setting that shapes the teacher (its cache key): model and recipe, data and its version,
    the view it learns from (combo and parameters), epochs, imgsz, batch, seed, trainer and callbacks."""
    view = teacher_view(cfg)
    data = _plain(cfg.data)
    data_version: dict[str, Any] = {}
    root = data.get("root") if isinstance(data, dict) else None
    if root and Path(str(root)).is_dir():
        data_version["fingerprint"] = dataset_fingerprint(str(root))
    else:
        try:
            from fgkd.data.synth import synthpipes

            data_version["synthpipes"] = synthpipes.GENERATOR_VERSION
        except ImportError:  # pragma: no cover - the generator is part of the package
            pass
    trainer = {k: v for k, v in (_plain(cfg.trainer) or {}).items() if k not in _NON_SHAPING_TRAINER_KEYS}
    callbacks = {k: v for k, v in (_plain(cfg.get("callbacks")) or {}).items()  # checkpointing shapes nothing
                 if not str((v or {}).get("_target_", "")).endswith("ModelCheckpoint")}
    return {
        "fgkd": fgkd.__version__,
        "model": _plain(cfg.model),
        "data": data,
        "data_version": data_version,
        "view": view,
        "preprocess": _plain(cfg.preprocess) if view == "preprocessed" else {"combo": "none"},
        "epochs": int(cfg.teacher.epochs),
        "imgsz": int(cfg.imgsz),
        "batch_size": int(cfg.batch_size),
        "seed": cfg.get("seed"),
        "trainer": trainer,
        "callbacks": callbacks,
    }


def _teacher_label(cfg: DictConfig) -> str:
    view = teacher_view(cfg)
    combo = str(OmegaConf.select(cfg, "preprocess.combo")) if view == "preprocessed" else "original"
    return f"{cfg.model.name}-{combo}"


def train_teacher(cfg: DictConfig, cache_root: Path) -> CacheEntry:
    """The cached teacher for ``cfg``, training it (stage 1) when no finished entry exists."""
    view = teacher_view(cfg)
    if view == "preprocessed" and str(OmegaConf.select(cfg, "preprocess.combo")) == "none":
        raise ValueError(
            "kd.teacher_view=preprocessed needs a preprocessing combo for the teacher's view; choose one "
            "(e.g. preprocess=rb_sf, the paper's best) or use kd.teacher_view=original for classical feature KD"
        )

    def build(tmp: Path) -> None:
        print(f"[fakd] stage 1/2: training the teacher ({_teacher_label(cfg)}) on the {view} view", flush=True)
        result = fit(cfg, output_dir=tmp / "run", view=view, val_view=view,
                     epochs=int(cfg.teacher.epochs), tag="teacher")
        if result.detector_path is None:
            raise RuntimeError("the teacher run wrote no detector weights")
        shutil.copyfile(result.detector_path, tmp / CHECKPOINT_NAME)
        shutil.copyfile(result.metrics_path, tmp / METRICS_FILE)

    entry = TeacherCache(cache_root).get_or_build(teacher_spec(cfg), build, label=_teacher_label(cfg))
    if entry.reused:
        print(f"[fakd] stage 1/2: reusing the cached teacher {entry.path}", flush=True)
    return entry


def _five(metrics_json: dict[str, Any]) -> dict[str, float]:
    source = metrics_json.get("metrics", metrics_json)
    return {k: float(source.get(k, math.nan)) for k in FIVE_METRICS}


def run(cfg: DictConfig) -> PipelineResult:
    """Stage 1 (teacher, cached or given) → stage 2 (student with KD) → metrics.json in the run folder."""
    output_dir = Path(str(OmegaConf.select(cfg, "paths.output_dir"))).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.teacher.ckpt:
        teacher_path, reused, teacher_metrics = Path(str(cfg.teacher.ckpt)).expanduser(), True, {}
        teacher_info: dict[str, Any] = {"path": str(teacher_path), "source": "teacher.ckpt"}
    else:
        cache_root = Path(str(OmegaConf.select(cfg, "paths.cache_dir"))) / "teachers"
        entry = train_teacher(cfg, cache_root)
        teacher_path, reused = entry.checkpoint, entry.reused
        teacher_metrics = _five(entry.metrics)
        teacher_info = {"path": str(entry.path), "key": entry.key, "reused": entry.reused, "source": "cache",
                        "view": teacher_view(cfg), "metrics_on": teacher_view(cfg)}
    teacher, info = load_detector(teacher_path)
    if info["detector"]["name"] != str(cfg.model.name):
        print(f"[fakd] heterogeneous pair: teacher {info['detector']['name']} → student {cfg.model.name} "
              "(1×1 adapters map student channels to the teacher's)", flush=True)

    print(f"[fakd] stage 2/2: training the student ({cfg.model.name}) on original images, "
          f"kd={cfg.kd.name} alpha={cfg.alpha}", flush=True)
    # ckpt_path=auto (sweeps, requeued jobs): continue the student from <run>/student/checkpoints/last.ckpt;
    # the teacher stage needs no resume, the cache holds only finished teachers.
    student = fit(cfg, output_dir=output_dir / "student", view="original", val_view="original",
                  teacher=teacher, tag="student", ckpt_path=OmegaConf.select(cfg, "ckpt_path"))
    payload = {
        "final": student.five,
        "student": student.five,
        "teacher": teacher_metrics,
        "per_class": json.loads(student.metrics_path.read_text()).get("per_class", {}),
        "alpha": float(cfg.alpha),
        "kd": str(cfg.kd.name),
        "kd_teacher_view": teacher_view(cfg),
        "preprocess": str(OmegaConf.select(cfg, "preprocess.combo")),
        "model": str(cfg.model.name),
        "evaluated_on": "original images, no mask",
        "teacher_ckpt": teacher_info,
        "paths": {"run_dir": str(output_dir), "student_dir": str(student.output_dir),
                  "student_detector": str(student.detector_path) if student.detector_path else None,
                  "best_ckpt": str(student.best_ckpt) if student.best_ckpt else None},
    }
    metrics_path = atomic_write_json(output_dir / METRICS_FILE, payload)
    return PipelineResult(
        metrics=student.five, teacher_metrics=teacher_metrics, output_dir=output_dir, metrics_path=metrics_path,
        best_ckpt=student.best_ckpt, teacher_path=teacher_path, teacher_reused=reused, student=student,
    )
