"""Train a detector: `python train.py` (defaults in conf/train.yaml), e.g. `python train.py model=yolov6s kd=cs alpha=0.5`.

Thin Hydra entry point: validate the composed config (fgkd.config), run the stage (fgkd.training /
fgkd.pipeline), print the five metrics and the run folder, return the optimized metric for sweepers.
"""

from __future__ import annotations

import math

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from fgkd.config import validate
    from fgkd.metrics.detection import format_table
    from fgkd.training import run

    settings = validate(cfg)
    result = run(cfg)
    label = f"{settings.model} {settings.stage} kd={settings.kd}" + (f" a={settings.alpha:g}" if settings.kd != "none" else "")
    rows = {label: result.metrics}
    teacher_metrics = getattr(result, "teacher_metrics", None)
    if teacher_metrics:  # the FAKD pipeline: the teacher was validated on its own view
        rows = {f"teacher ({cfg.model.name}, on {cfg.kd.teacher_view} view)": teacher_metrics,
                f"student ({cfg.model.name}, kd={settings.kd} a={settings.alpha:g}, original)": result.metrics}
    print()
    print(format_table(rows))
    print(f"run folder: {result.output_dir}")
    print(f"metrics:    {result.metrics_path}")
    if result.best_ckpt is not None:
        print(f"best ckpt:  {result.best_ckpt}")
    metric = str(cfg.get("optimized_metric") or "val/map").removeprefix("val/")
    value = result.metrics.get(metric, math.nan)
    return float(value)


if __name__ == "__main__":
    main()
