"""Train: `python train.py` (defaults in conf/train.yaml), e.g. `python train.py model=yolov6s kd=cs alpha=0.5`.

Thin Hydra entry point: validate the composed config (fgkd.config), run it (fgkd.pipeline: one fit, or
teacher -> student), print the task's metrics and the run folder, return the optimized metric for sweepers.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from fgkd.config import ConfigError, validate

    try:
        settings = validate(cfg)  # imports no torch: a bad value fails in about a second
    except ConfigError as err:
        _fail(err)
    from fgkd.data.formats.common import DataError
    from fgkd.metrics.table import format_table
    from fgkd.pipeline import run
    from fgkd.tasks import get_task

    try:
        task = get_task(settings.task)
        result = run(cfg)
    except (ConfigError, DataError) as err:  # bad data, or a value only the built pieces can check
        _fail(err)
    rows = {settings.label: result.metrics}
    teacher_metrics = getattr(result, "teacher_metrics", None)
    if teacher_metrics:  # two stages: the teacher was validated on its own view
        rows = {f"teacher ({settings.teacher_model})": teacher_metrics, f"student ({settings.label})": result.metrics}
    extra_rows = dict((getattr(result, "extras", None) or {}).get("rows") or {})
    if extra_rows:  # the task's rows beside the run's (anomaly: each category, the trivial baseline)
        label = f"{settings.label} (mean of {len(result.per_class)})" if getattr(result, "parts", None) else settings.label
        rows = {**{k: v for k, v in extra_rows.items() if k in getattr(result, "per_class", {})},
                label: result.metrics, **{k: v for k, v in extra_rows.items() if k not in getattr(result, "per_class", {})}}
    print()
    print(format_table(rows, list(cfg.get("metrics") or task.metric_columns), task.display_names))
    print(f"run folder: {result.output_dir}")
    print(f"metrics:    {result.metrics_path}")
    if result.best_ckpt is not None:
        print(f"best ckpt:  {result.best_ckpt}")
    metric = str(cfg.get("optimized_metric") or "val/map").removeprefix("val/")
    return float(result.metrics.get(metric, math.nan))


def _fail(err: Exception) -> None:
    """A bad value or bad data: one message, no traceback, exit 2, no run folder left behind."""
    _remove_unstarted_run_folder()
    print(f"error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def _remove_unstarted_run_folder() -> None:
    """A run that never trained leaves no folder behind (only Hydra's own files would be in it)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        folder = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under @hydra.main
        return
    if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
