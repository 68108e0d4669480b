"""hparams_search=alpha_optuna: Hydra's Optuna sweeper over alpha and the KD loss, driven through train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper (requirements.txt)")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "imgsz=64", "epochs=1", "batch_size=4", "num_workers=0", "logger=none",
    "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
    "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
]


def _search_override() -> str:
    """``hparams_search=alpha_optuna`` once conf/train.yaml lists the group (``- hparams_search: null``),
    else the append form Hydra needs for a group missing from the defaults list."""
    defaults = yaml.safe_load((REPO_ROOT / "conf" / "train.yaml").read_text())["defaults"]
    listed = any(isinstance(item, dict) and "hparams_search" in item for item in defaults)
    return ("" if listed else "+") + "hparams_search=alpha_optuna"


def test_search_config_declares_the_space_and_the_metric():
    conf = yaml.safe_load((REPO_ROOT / "conf" / "hparams_search" / "alpha_optuna.yaml").read_text())
    assert {"override /hydra/sweeper": "optuna"} in conf["defaults"]
    assert conf["optimized_metric"] == "val/map"
    sweeper = conf["hydra"]["sweeper"]
    assert sweeper["direction"] == "maximize" and sweeper["sampler"]["seed"] is not None
    assert sweeper["params"] == {"alpha": "interval(0.05, 1.0)", "kd": "choice(cs, mse, mmd, cwd)"}


def test_two_trials_through_train_py_write_the_optimization_result(tmp_path, tiny_synthpipes):
    sweep_dir = tmp_path / "search"
    command = [sys.executable, str(REPO_ROOT / "train.py"), "-m", _search_override(), "hydra.sweeper.n_trials=2",
               *TINY, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    trials = []
    for job in ("0", "1"):
        payload = json.loads((sweep_dir / job / "metrics.json").read_text())
        overrides = yaml.safe_load((sweep_dir / job / ".hydra" / "overrides.yaml").read_text())
        alpha = float(next(o for o in overrides if o.startswith("alpha=")).split("=", 1)[1])
        kd = next(o for o in overrides if o.startswith("kd=")).split("=", 1)[1]
        assert (payload["run"]["alpha"], payload["run"]["kd"]) == (pytest.approx(alpha), kd)  # the trial ran what Optuna asked
        assert 0.05 <= alpha <= 1.0 and kd in ("cs", "mse", "mmd", "cwd")
        trials.append((payload["metrics"]["map"], alpha, kd))
    assert not (sweep_dir / "2").exists()

    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["name"] == "optuna"
    assert set(result["best_params"]) == {"alpha", "kd"}
    best = max(trials, key=lambda t: t[0])
    assert result["best_value"] == pytest.approx(best[0])  # train.py returned val/map to the sweeper
    assert (result["best_params"]["alpha"], result["best_params"]["kd"]) in [(pytest.approx(a), k) for m, a, k in trials
                                                                             if m == best[0]]
