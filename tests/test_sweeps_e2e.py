"""Sweeps end to end through the entry points: `python sweep.py smoke_grid` (2x2 KD loss x alpha, one shared
cached teacher, table, resume by metrics.json) and the same grid as a Hydra multirun of train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgkd import sweeps

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = {"CS, α = 0.1", "CS, α = 0.5", "MSE, α = 0.1", "MSE, α = 0.5"}
HEADER = ["Method", "mAP", "mAP50", "mAR1", "mAR10", "mAR100"]


def _complete_teachers(cache: Path) -> set[str]:
    return {p.name for p in (cache / "teachers").glob("*") if (p / "COMPLETE").is_file()}


def _markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _sweep(sweep_dir: Path) -> subprocess.CompletedProcess:
    # FGKD_CACHE is the test session's cache (tests/conftest.py), inherited by sweep.py and each train.py
    command = [sys.executable, str(REPO_ROOT / "sweep.py"), "smoke_grid", "--dir", str(sweep_dir)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_smoke_grid_trains_one_teacher_four_students_prints_the_table_and_resumes(tmp_path, fgkd_cache,
                                                                                  tiny_synthpipes):
    sweep_dir = tmp_path / "sweep"
    before = _complete_teachers(fgkd_cache)
    first = _sweep(sweep_dir)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    runs = sweeps.load_experiment("smoke_grid").runs()
    assert len(runs) == 4
    payloads = [json.loads((run.directory(sweep_dir) / "metrics.json").read_text()) for run in runs]
    assert [(p["run"]["kd"], p["run"]["alpha"]) for p in payloads] == [("cs", 0.1), ("cs", 0.5), ("mse", 0.1), ("mse", 0.5)]
    teacher_keys = {p["teacher"]["key"] for p in payloads}
    assert len(teacher_keys) == 1  # alpha and the KD loss do not shape the teacher: one for four students
    (entry,) = {Path(p["teacher"]["path"]).name for p in payloads}
    trained = sum(not p["teacher"]["reused"] for p in payloads)
    assert trained == (0 if entry in before else 1)  # trained at most once, by the first run that needed it
    assert _complete_teachers(fgkd_cache) - before <= {entry}

    table_md = (sweep_dir / "table.md").read_text()
    for text in (first.stdout, table_md):
        header, *rows = _markdown_rows(text)
        assert header == HEADER
        assert {row[0] for row in rows} == ROWS and len(rows) == 4
        assert all(0.0 <= float(cell) <= 1.0 for row in rows for cell in row[1:])
    assert "Command: `python sweep.py smoke_grid`" in table_md
    assert (sweep_dir / "table.csv").read_text().splitlines()[0] == ",".join(HEADER)

    stamps = {run: (run.directory(sweep_dir) / "metrics.json").stat().st_mtime_ns for run in runs}
    second = _sweep(sweep_dir)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert second.stdout.count("finished earlier") == 4 and "running in" not in second.stdout
    assert all((run.directory(sweep_dir) / "metrics.json").stat().st_mtime_ns == stamps[run] for run in runs)
    assert _markdown_rows(second.stdout) == _markdown_rows(first.stdout)


@pytest.mark.slow
def test_smoke_grid_as_a_hydra_multirun_of_train_py(tmp_path, tiny_synthpipes):
    sweep_dir = tmp_path / "multirun"
    command = [sys.executable, str(REPO_ROOT / "train.py"), "-m", "experiment=smoke_grid",
               "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (sweep_dir / "multirun.yaml").is_file()
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    points = set()
    for job in jobs:
        payload = json.loads((job / "metrics.json").read_text())
        points.add((payload["run"]["kd"], payload["run"]["alpha"]))
        assert set(payload["metrics"]) == set(sweeps.METRIC_KEYS)
    assert points == {("cs", 0.1), ("cs", 0.5), ("mse", 0.1), ("mse", 0.5)}
