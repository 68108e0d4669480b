"""What ``train.py`` runs for a validated config, for any task: one fit, or teacher (given or cached) → student.

* ``stage=teacher``: the task's teacher fit alone (detect: the detector on X_M).
* a task/config without a teacher stage (``task.needs_teacher(cfg)`` false, e.g. ``kd=none``): one ``base`` fit.
* ``stage=student``: the student against ``teacher.ckpt``.
* a run the task expands into several fits (``task.expand(cfg)``, e.g. anomaly ``data.category=all``): one
  fit per part in ``<run>/<label>/`` (a part with a ``metrics.json`` is finished and skipped, so a killed run
  continues where it stopped), then ``task.aggregate`` writes the run's ``metrics.json``.
* ``stage=full`` with a teacher: stage 1 — the teacher from ``teacher.ckpt`` or the teacher cache
  (``fgkd.teacher_cache``, keyed by ``task.teacher_spec(cfg)``: sweeps that share a teacher train it once);
  stage 2 — the student, in the run folder itself; its ``metrics.json`` holds the student's metrics (evaluated
  as the task says: detect on original images, no mask) and the teacher's.

One layout for every run: the trained model of the run (base, student or teacher) at the top of the run folder
(``checkpoints/``, the artifact, ``metrics.json``, ``results.png``, ``csv/``); a run that learned from a teacher
also has ``teacher/`` with links to that teacher's artifact, ``metrics.json`` and ``results.png`` (in the
teacher cache, or the ``teacher.ckpt`` given).

Every fit is ``fgkd.engine.fit``; every ``metrics.json`` has the schema of ``fgkd.engine.metrics_payload``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fgkd.engine import (
    AUTO_RESUME,
    METRICS_FILE,
    RESULTS_FILE,
    FitResult,
    fit,
    metrics_payload,
    read_metrics,
    write_metrics,
)
from fgkd.tasks import Task, get_task
from fgkd.teacher_cache import CHECKPOINT_NAME, CacheEntry, TeacherCache


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
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExpandedResult:
    """An expanded run: the aggregate metrics, every part's payload, the printed rows (``extras["rows"]``)."""

    metrics: dict[str, float]
    per_class: dict[str, Any]
    extras: dict[str, Any]
    output_dir: Path
    metrics_path: Path
    parts: dict[str, dict[str, Any]]
    best_ckpt: Path | None = None


def cached_fit(cfg: DictConfig, task: Task, role: str, cache_root: Path, spec: dict[str, Any], label: str,
               epochs: int, what: str, kind: str) -> CacheEntry:
    """One fit kept in a content-keyed cache (``fgkd.teacher_cache``): trained when no finished entry for
    ``spec`` exists, else reused. The entry holds the artifact, ``metrics.json`` and ``results.png``."""

    def build(tmp: Path) -> None:
        print(f"[{task.name}] {what}: training the {kind} ({label})", flush=True)
        # ckpt_path=auto: an interrupted earlier build left its last.ckpt in this folder (TeacherCache)
        result = fit(cfg, task, role, output_dir=tmp / "run", epochs=epochs, ckpt_path=AUTO_RESUME)
        if result.artifact_path is None:
            raise RuntimeError(f"the {what} run wrote no model file")
        shutil.copyfile(result.artifact_path, tmp / CHECKPOINT_NAME)
        shutil.copyfile(result.metrics_path, tmp / METRICS_FILE)
        if (result.output_dir / RESULTS_FILE).is_file():  # the curves, linked from each run that uses the entry
            shutil.copyfile(result.output_dir / RESULTS_FILE, tmp / RESULTS_FILE)

    entry = TeacherCache(cache_root).get_or_build(spec, build, label=label)
    if entry.reused:
        print(f"[{task.name}] {what}: reusing the cached {kind} {entry.path}", flush=True)
    return entry


def train_teacher(cfg: DictConfig, task: Task, cache_root: Path) -> CacheEntry:
    """The cached teacher for ``cfg``, training it (stage 1) when no finished entry exists; ``teacher.seed``
    (when set) seeds it, so students of several seeds can learn from one teacher."""
    teacher_cfg = cfg
    if OmegaConf.select(cfg, "teacher.seed") is not None:
        teacher_cfg = cfg.copy()
        with read_write(teacher_cfg), open_dict(teacher_cfg):
            teacher_cfg.seed = int(cfg.teacher.seed)
    # the key of the config the teacher is trained with: settings that follow ${seed} (the data's sampler and
    # augmentation seed) take the teacher's seed, so students of every seed find the one teacher
    spec = task.teacher_spec(teacher_cfg)
    if spec is None:
        raise ValueError(f"task {task.name!r} has no teacher stage for this config")
    return cached_fit(teacher_cfg, task, "teacher", cache_root, spec, task.teacher_label(cfg),
                      int(cfg.teacher.epochs), "stage 1/2", "teacher")


def with_pretraining(cfg: DictConfig, task: Task) -> DictConfig:
    """``cfg`` with its models initialised from their cached pretraining fits (``pretrain=synthpipes``: the
    stand-in for the paper's COCO weights; trained once per architecture and settings, shared by every run)."""
    roles = ["student"]
    if task.needs_teacher(cfg) and not OmegaConf.select(cfg, "teacher.ckpt"):
        roles.append("teacher")  # a heterogeneous teacher has its own architecture to pretrain
    cache_root = Path(str(OmegaConf.select(cfg, "paths.cache_dir"))) / "pretrained"
    for role in roles:
        plan = task.pretraining(cfg, role)
        if plan is None:
            continue
        part, spec, label = plan
        entry = cached_fit(part, task, "base", cache_root, spec, label, int(part.epochs), "pretraining", "pretrained model")
        print(f"[{task.name}] {role} initialised from the pretrained {entry.checkpoint}", flush=True)
        cfg = task.with_pretrained(cfg, role, entry.checkpoint)
    return cfg


def link_teacher(source: Path, folder: Path, name: str) -> Path:
    """``<run>/teacher/<artifact>``: the teacher this run used (a symlink into the teacher cache, a copy where
    links are not possible), so ``stage=student teacher.ckpt=<run>/teacher/detector.pt`` names a real file;
    the teacher's ``metrics.json`` and ``results.png`` beside it are linked too when they exist."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    _link(Path(source), target)
    for extra in (METRICS_FILE, RESULTS_FILE):
        if (Path(source).parent / extra).is_file():
            _link(Path(source).parent / extra, folder / extra)
    return target


def _link(source: Path, target: Path) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copyfile(source, target)


def run(cfg: DictConfig) -> FitResult | PipelineResult | ExpandedResult:
    """Dispatch ``cfg`` by ``stage`` and the task's teacher stage (module docstring)."""
    task = get_task(cfg)
    task.validate(cfg)
    cfg = with_pretraining(cfg, task)
    parts = task.expand(cfg)
    if parts:
        return run_expanded(cfg, task, parts)
    stage = str(cfg.stage)
    resume = OmegaConf.select(cfg, "ckpt_path")
    if stage == "teacher":
        return fit(cfg, task, "teacher", epochs=int(cfg.teacher.epochs), ckpt_path=resume)
    if not task.needs_teacher(cfg):
        return fit(cfg, task, "base", ckpt_path=resume)
    if stage == "student" and not cfg.teacher.ckpt:
        raise ValueError("stage=student needs teacher.ckpt=<path to a trained teacher>")
    return run_two_stage(cfg, task)  # ckpt_path resumes the student: the teacher is cached or given


def run_expanded(cfg: DictConfig, task: Task, parts: list[tuple[str, DictConfig]]) -> ExpandedResult:
    """One fit per part (finished parts skipped), then the task's aggregate in ``<run>/metrics.json``."""
    output_dir = Path(str(OmegaConf.select(cfg, "paths.output_dir"))).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    payloads: dict[str, dict[str, Any]] = {}
    for number, (label, part_cfg) in enumerate(parts, 1):
        part_dir = output_dir / label
        done = part_dir / METRICS_FILE
        if done.is_file():
            print(f"[{task.name}] {number}/{len(parts)} {label}: finished earlier ({done}), skipped", flush=True)
        else:
            print(f"[{task.name}] {number}/{len(parts)} {label}", flush=True)
            fit(part_cfg, task, "base", output_dir=part_dir, ckpt_path=AUTO_RESUME)
        payloads[label] = read_metrics(done)
    metrics, per_class, extras = task.aggregate(cfg, payloads)
    payload = {
        **metrics_payload(task, FitResult(task=task.name, role="base", metrics=metrics, per_class=per_class,
                                          best_epoch=None, output_dir=output_dir, best_ckpt=None, last_ckpt=None,
                                          artifact_path=None, metrics_path=output_dir / METRICS_FILE, extras=extras),
                          run={**task.run_info(cfg, "base"), "parts": [label for label, _ in parts]},
                          paths={label: str(output_dir / label) for label, _ in parts}),
    }
    metrics_path = write_metrics(output_dir / METRICS_FILE, payload)
    return ExpandedResult(metrics=metrics, per_class=per_class, extras=extras, output_dir=output_dir,
                          metrics_path=metrics_path, parts=payloads)


def run_two_stage(cfg: DictConfig, task: Task) -> PipelineResult:
    """Stage 1 (teacher, given or cached) → stage 2 (student) → ``metrics.json`` in the run folder."""
    output_dir = Path(str(OmegaConf.select(cfg, "paths.output_dir"))).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    teacher_run = task.run_info(cfg, "teacher")
    if cfg.teacher.ckpt:
        teacher_path, reused, teacher_metrics = Path(str(cfg.teacher.ckpt)).expanduser(), True, {}
        teacher_info: dict[str, Any] = {"path": str(teacher_path), "source": "teacher.ckpt", "reused": True}
    else:
        cache_root = Path(str(OmegaConf.select(cfg, "paths.cache_dir"))) / "teachers"
        entry = train_teacher(cfg, task, cache_root)
        teacher_path, reused = entry.checkpoint, entry.reused
        teacher_payload = read_metrics(entry.path / METRICS_FILE)
        teacher_metrics = dict(teacher_payload["metrics"])
        teacher_info = {"path": str(entry.path), "key": entry.key, "reused": entry.reused, "source": "cache",
                        "run": teacher_run, "test": teacher_payload.get("test")}
    teacher_info["metrics"] = teacher_metrics
    teacher_info["file"] = str(link_teacher(teacher_path, output_dir / "teacher", task.artifact_name))
    teacher, _ = task.load_artifact(teacher_path)

    student_run = task.run_info(cfg, "student")
    print(f"[{task.name}] stage 2/2: training the student ({student_run.get('model')}), "
          f"kd={OmegaConf.select(cfg, 'kd.name')} alpha={cfg.alpha}", flush=True)
    # ckpt_path=auto (sweeps, requeued jobs): continue the student from <run>/checkpoints/last.ckpt;
    # the teacher stage needs no resume, the cache holds only finished teachers.
    student = fit(cfg, task, "student", output_dir=output_dir, teacher=teacher,
                  ckpt_path=OmegaConf.select(cfg, "ckpt_path"), teacher_info=teacher_info)
    return PipelineResult(
        metrics=student.metrics, teacher_metrics=teacher_metrics, output_dir=output_dir,
        metrics_path=student.metrics_path,
        best_ckpt=student.best_ckpt, teacher_path=teacher_path, teacher_reused=reused, student=student,
    )
