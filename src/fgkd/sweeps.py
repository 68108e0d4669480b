"""Paper ablation grids: expansion, run bookkeeping and launching (the tables: :mod:`fgkd.sweep_tables`).

One source of truth per table: ``conf/experiment/<name>.yaml``. Its ``hydra.sweeper.params`` is the grid
(Hydra's own override grammar, so ``python train.py -m experiment=<name>`` runs the same grid) and its
``sweep`` block says how to lay the results out. ``sweep.py`` expands the grid with Hydra's override
parser, identifies each run by its resolved override list, skips finished runs (``metrics.json``
present), launches the rest as single ``train.py`` processes (so a run may itself use DDP), then
aggregates into ``outputs/sweeps/<name>/table.{md,csv}`` (+ ``fig6.png``).

Every run is started with ``ckpt_path=auto`` in its own deterministic folder, so a run that was killed
(Ctrl-C, a pre-empted or timed-out SLURM job) continues from its last finished epoch when the sweep is
started again or submitit requeues it. ``$FGKD_TRAIN_COMMAND`` replaces the training command
(default: this Python + ``train.py``), e.g. ``"torchrun --nproc_per_node 2 train.py"``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fgkd.options import DISPLAY_NAMES, FIVE_METRICS
from fgkd.paths import SWEEP_GROUP_ENV, project_root

#: the detection tables' columns and headers (fgkd.metrics.detection names them once); an experiment of another
#: task (``sweep.task: anomaly``) takes that task's columns (:attr:`Experiment.metric_keys`)
METRIC_KEYS = tuple(FIVE_METRICS)
METRIC_NAMES = tuple(DISPLAY_NAMES[key] for key in METRIC_KEYS)
SCALES = ("smoke", "dev", "paper")
LAUNCHERS = ("local", "joblib", "slurm")
#: environment variable holding a replacement for ``python train.py`` (split like a shell command line)
TRAIN_COMMAND_ENV = "FGKD_TRAIN_COMMAND"
#: ``slurm.<option>`` of sweep.py -> (``submitit.AutoExecutor.update_parameters`` name, type)
SLURM_OPTIONS: dict[str, tuple[str, type]] = {
    "partition": ("slurm_partition", str),
    "gpus_per_node": ("gpus_per_node", int),
    "cpus_per_task": ("cpus_per_task", int),
    "mem_gb": ("mem_gb", float),
    "timeout_min": ("timeout_min", int),
    "array_parallelism": ("slurm_array_parallelism", int),
    "account": ("slurm_account", str),
    "qos": ("slurm_qos", str),
    "constraint": ("slurm_constraint", str),
    "name": ("name", str),
}
#: where the jobs go: a SLURM cluster, or submitit's local executor (same code path, subprocesses here)
SLURM_CLUSTERS = ("slurm", "local")
#: submitit's own default job time is a few minutes; a job that reaches this limit is requeued (up to
#: submitit's max_num_timeout, 3 times) and resumes from its last.ckpt
DEFAULT_TIMEOUT_MIN = 60


@dataclass(frozen=True)
class Run:
    """One training run: the experiment, its grid point (``params``), the scale, the seed and the extra
    overrides given after ``--`` (``extra``). Its identity (:attr:`run_id`, the run folder) is every override
    that shapes it plus the fgkd version: ``sweep.py table5 -- epochs=2`` is a different run from
    ``sweep.py table5``, and a new fgkd version starts new runs instead of tabulating old ones as new."""

    experiment: str
    params: tuple[tuple[str, str], ...]
    scale: str
    seed: int
    extra: tuple[str, ...] = ()

    @property
    def overrides(self) -> list[str]:
        return [f"experiment={self.experiment}", *(f"{k}={v}" for k, v in self.params),
                f"scale={self.scale}", f"seed={self.seed}", *self.extra]

    @property
    def run_id(self) -> str:
        import fgkd

        identity = [*sorted(self.overrides), f"fgkd={fgkd.__version__}"]
        return hashlib.sha1("\n".join(identity).encode()).hexdigest()[:10]

    @property
    def slug(self) -> str:
        text = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in self.params) or "run"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80] + f"_s{self.seed}"

    def directory(self, sweep_dir: Path) -> Path:
        return sweep_dir / "runs" / f"{self.slug}-{self.run_id}"

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params) + f" seed={self.seed}"


@dataclass
class Experiment:
    name: str
    params: dict[str, list[str]]
    layout: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.layout.get("task", "detect"))

    @property
    def metric_keys(self) -> tuple[str, ...]:
        from fgkd.tasks.checks import SPECS

        return tuple(SPECS[self.task].metric_columns)

    @property
    def metric_names(self) -> tuple[str, ...]:
        from fgkd.tasks.checks import SPECS

        names = SPECS[self.task].display_names
        return tuple(names.get(k, k) for k in self.metric_keys)

    def runs(self, scale: str = "smoke", seeds: int = 1, extra: Sequence[str] = ()) -> list[Run]:
        """Every grid point × seed; ``extra``: overrides for every run (sweep.py's arguments after ``--``),
        part of each run's identity (``ckpt_path=...`` is not: it only says where to resume from)."""
        keys = list(self.params)
        grid = itertools.product(*(self.params[k] for k in keys))
        shaping = tuple(e for e in extra if not e.startswith("ckpt_path="))
        return [Run(self.name, tuple(zip(keys, point, strict=True)), scale, seed, shaping)
                for point in grid for seed in range(seeds)]


def _sweep_values(value: Any) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([f"x={value}"])
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def load_experiment(name: str, conf_dir: Path | None = None) -> Experiment:
    conf_dir = conf_dir if conf_dir is not None else project_root() / "conf"
    path = conf_dir / "experiment" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "experiment").glob("*.yaml"))
        raise ValueError(f"unknown experiment {name!r}: no {path}; choose one of: {', '.join(known)}")
    raw = yaml.safe_load(path.read_text()) or {}
    layout = dict(raw.get("sweep") or {})
    source = layout.get("runs_from")
    if source:  # e.g. fig6 plots table5's runs: same grid, same run folders
        base = load_experiment(source, conf_dir)
        return Experiment(base.name, base.params, {**base.layout, **layout, "figure_only": True})
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    if not params:
        raise ValueError(f"{path}: hydra.sweeper.params is empty; an experiment preset must define its grid")
    return Experiment(name, {k: _sweep_values(v) for k, v in params.items()}, layout)


# ----------------------------------------------------------------------------------------------- results
def read_payload(run_dir: Path) -> dict[str, Any] | None:
    """The whole ``metrics.json`` of a finished run, or None when it has not finished."""
    from fgkd.engine import read_metrics as read_file

    path = run_dir / "metrics.json"
    return read_file(path) if path.is_file() else None


def read_metrics(run_dir: Path, keys: Sequence[str] = METRIC_KEYS) -> dict[str, float] | None:
    """The reported metrics ``keys`` of a finished run (``metrics.json["metrics"]``), or None when it has not finished."""
    payload = read_payload(run_dir)
    if payload is None:
        return None
    metrics = payload["metrics"]
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"{run_dir / 'metrics.json'}: metrics lack {missing}; was it written by train.py of this task?")
    return {k: float(metrics[k]) for k in keys}


@dataclass
class RunResult:
    run: Run
    directory: Path
    metrics: dict[str, float] | None
    failed: bool = False
    log: Path | None = None
    payload: dict[str, Any] | None = None
    running_elsewhere: bool = False


def collect_results(exp: Experiment, sweep_dir: Path, scale: str, seeds: int,
                    extra: Sequence[str] = ()) -> list[RunResult]:
    """The runs of this grid *with these extra overrides* (runs of other settings are never mixed in)."""
    results = []
    for run in exp.runs(scale, seeds, extra):
        directory = run.directory(sweep_dir)
        metrics = read_metrics(directory, exp.metric_keys)
        failed = metrics is None and (directory / "FAILED").exists()
        payload = read_payload(directory) if metrics is not None else None
        results.append(RunResult(run, directory, metrics, failed, directory / "train.log", payload))
    return results


# ----------------------------------------------------------------------------------------------- launching
def train_command(run: Run, run_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """``python train.py <run overrides> <extra> hydra.run.dir=<run_dir>`` (``$FGKD_TRAIN_COMMAND`` replaces
    ``python train.py``)."""
    custom = os.environ.get(TRAIN_COMMAND_ENV, "").strip()
    program = shlex.split(custom) if custom else [sys.executable, str(project_root() / "train.py")]
    overrides = run.overrides
    return [*program, *overrides, *(e for e in extra if e not in overrides), f"hydra.run.dir={run_dir}"]


#: a run folder's lock: held by the sweep while it runs the run and inherited by its train.py child, so a
#: second sweep (or a rerun after ``kill -9`` of the first while its child lives on) never starts it twice
RUN_LOCK = ".run.lock"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the train.py child gets SIGTERM when its sweep dies, even by ``kill -9``."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_one(run: Run, sweep_dir: Path, extra: Sequence[str] = (), keys: Sequence[str] = METRIC_KEYS) -> RunResult:
    """Run ``train.py`` for one grid point in its own folder; output goes to ``<run>/train.log``.

    ``ckpt_path=auto`` comes first (an ``extra`` ``ckpt_path=...`` wins): a run killed earlier resumes from
    its own ``last.ckpt`` (the student's, for the two-stage pipeline) instead of starting over. A run whose
    folder lock (:data:`RUN_LOCK`) is held by a live process is not started again: it is reported as
    ``running elsewhere`` (not failed, no metrics yet).
    """
    import fcntl

    extra = ["ckpt_path=auto", *extra]
    run_dir = run.directory(sweep_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / RUN_LOCK, "a+")  # noqa: SIM115 - held across the child's lifetime
    try:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return RunResult(run, run_dir, None, failed=False, log=run_dir / "train.log", running_elsewhere=True)
        (run_dir / "FAILED").unlink(missing_ok=True)
        (run_dir / "overrides.json").write_text(json.dumps(run.overrides + list(extra), indent=1))
        log = run_dir / "train.log"
        with open(log, "a") as handle:
            handle.write(f"$ {' '.join(train_command(run, run_dir, extra))}\n")
            handle.flush()
            proc = subprocess.run(train_command(run, run_dir, extra), stdout=handle, stderr=subprocess.STDOUT,
                                  cwd=Path.cwd(), env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                       SWEEP_GROUP_ENV: os.environ.get(SWEEP_GROUP_ENV) or run.experiment},
                                  pass_fds=(lock.fileno(),),
                                  # preexec_fn is unsafe once threads exist (the joblib launcher): there the
                                  # inherited lock alone keeps a rerun from starting the run twice
                                  preexec_fn=_die_with_parent if threading.active_count() == 1 else None)
        metrics = read_metrics(run_dir, keys) if proc.returncode == 0 else None
        if metrics is None:
            stopped = proc.returncode in (130, 143, -2, -15)  # Ctrl-C / SIGTERM: the run saved its last.ckpt
            (run_dir / "FAILED").write_text(f"{'interrupted, ' if stopped else ''}exit code {proc.returncode}"
                                            f"{' (rerunning the sweep resumes it)' if stopped else ''}\n")
        return RunResult(run, run_dir, metrics, failed=metrics is None, log=log)
    finally:
        lock.close()


class _RequeueableRun:
    """submitit callable; on pre-emption or timeout submitit calls :meth:`checkpoint`, the job is resubmitted
    and ``train.py`` (started with ``ckpt_path=auto`` by :func:`run_one`) resumes from the run's last.ckpt."""

    def __init__(self, run: Run, sweep_dir: Path, extra: Sequence[str], keys: Sequence[str] = METRIC_KEYS) -> None:
        self.run, self.sweep_dir, self.extra, self.keys = run, sweep_dir, list(extra), tuple(keys)

    def __call__(self) -> RunResult:
        return run_one(self.run, self.sweep_dir, self.extra, self.keys)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def slurm_parameters(options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(cluster, AutoExecutor parameters)`` from sweep.py's ``slurm.<option>`` values (strings or numbers).

    Options: ``cluster`` (``slurm`` | ``local``: submitit's local executor, same code path, but every job of
    the array starts at once on this machine: meant for trying the path, not for real grids) and the keys of
    :data:`SLURM_OPTIONS` (``partition``, ``gpus_per_node``, ``timeout_min``, ``array_parallelism``, …).
    Unknown options or values of the wrong type raise a ValueError that lists the allowed ones.
    """
    options = dict(options)
    cluster = str(options.pop("cluster", "slurm"))
    if cluster not in SLURM_CLUSTERS:
        raise ValueError(f"slurm.cluster={cluster!r}: choose one of {', '.join(SLURM_CLUSTERS)}")
    unknown = sorted(set(options) - set(SLURM_OPTIONS))
    if unknown:
        raise ValueError(f"unknown slurm option(s) {', '.join('slurm.' + k for k in unknown)}; allowed: "
                         + ", ".join(f"slurm.{k}" for k in ["cluster", *SLURM_OPTIONS]))
    params: dict[str, Any] = {"timeout_min": DEFAULT_TIMEOUT_MIN}
    for key, value in options.items():
        name, kind = SLURM_OPTIONS[key]
        try:
            typed = kind(value)
            if kind is int and float(value) != typed:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"slurm.{key}={value!r}: expected {kind.__name__}") from None
        if kind in (int, float) and typed < (0 if key == "gpus_per_node" else 1):
            raise ValueError(f"slurm.{key}={value!r}: must be positive")
        params[name] = typed
    return cluster, params


def launch(runs: list[Run], sweep_dir: Path, launcher: str = "local", extra: Sequence[str] = (),
           n_jobs: int = 2, slurm: dict[str, Any] | None = None,
           echo: Callable[[str], None] = print, keys: Sequence[str] = METRIC_KEYS,
           names: Sequence[str] | None = None) -> list[RunResult]:
    """Run what is missing; a progress line per run (skipped, done with its first metric, or failed with its log).

    ``keys`` / ``names``: the experiment's metric columns and headers (:attr:`Experiment.metric_keys`).
    ``slurm``: sweep.py's ``slurm.<option>`` values (see :func:`slurm_parameters`) for ``launcher=slurm``.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; choose one of {LAUNCHERS}")
    first, first_name = keys[0], (names or METRIC_NAMES)[0]
    todo, results = [], []
    for i, run in enumerate(runs, 1):
        metrics = read_metrics(run.directory(sweep_dir), keys)
        if metrics is not None:
            echo(f"[{i}/{len(runs)}] {run.describe()}: finished earlier ({first_name} {metrics[first]:.3f}), skipped")
            results.append(RunResult(run, run.directory(sweep_dir), metrics))
        else:
            todo.append(run)
    if not todo:
        return results

    def report(index: int, result: RunResult, seconds: float) -> None:
        what = (f"done in {seconds:.0f}s ({first_name} {result.metrics[first]:.3f})" if result.metrics
                else f"running elsewhere (its folder is locked by a live process), skipped: {result.directory}"
                if result.running_elsewhere else f"FAILED after {seconds:.0f}s, log: {result.log}")
        echo(f"[{index}/{len(todo)} new] {result.run.describe()}: {what}")

    if launcher == "local":
        for i, run in enumerate(todo, 1):
            echo(f"[{i}/{len(todo)} new] {run.describe()}: running in {run.directory(sweep_dir)}")
            start = time.monotonic()
            result = run_one(run, sweep_dir, extra, keys)
            report(i, result, time.monotonic() - start)
            results.append(result)
    elif launcher == "joblib":
        from joblib import Parallel, delayed

        def timed(run: Run) -> tuple[RunResult, float]:
            start = time.monotonic()
            return run_one(run, sweep_dir, extra, keys), time.monotonic() - start

        echo(f"launching {len(todo)} runs, {n_jobs} at a time (joblib)")
        for i, (result, seconds) in enumerate(
                Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(delayed(timed)(r) for r in todo), 1):
            report(i, result, seconds)
            results.append(result)
    else:
        import submitit

        cluster, params = slurm_parameters(slurm or {})
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise RuntimeError("launcher=slurm: sbatch is not on PATH (run on a SLURM login node), or add "
                               "slurm.cluster=local to run the same jobs through submitit on this machine")
        executor = submitit.AutoExecutor(folder=sweep_dir / ".submitit" / "%j", cluster=cluster)
        executor.update_parameters(**params)
        jobs = executor.submit_array([_RequeueableRun(r, sweep_dir, extra, keys) for r in todo])
        echo(f"submitted {len(jobs)} jobs to {cluster} ({jobs[0].job_id.split('_')[0] if jobs else '-'}, "
             f"logs in {sweep_dir / '.submitit'}); waiting")
        for i, job in enumerate(jobs, 1):
            start = time.monotonic()
            result = job.result()
            report(i, result, time.monotonic() - start)
            results.append(result)
    return results
