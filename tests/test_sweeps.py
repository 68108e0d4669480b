"""Sweeps: grid expansion from the experiment presets, bookkeeping, resume, aggregation and Fig. 6."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from fgkd import sweep_tables, sweeps
from fgkd.engine import METRICS_SCHEMA

FIVE = dict(zip(sweeps.METRIC_KEYS, (0.25, 0.5, 0.2, 0.3, 0.4), strict=True))


def _fabricate(run: sweeps.Run, sweep_dir: Path, metrics: dict | None, failed: bool = False) -> Path:
    d = run.directory(sweep_dir)
    d.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps({"schema": METRICS_SCHEMA, "metrics": metrics,
                                                   "teacher": {"metrics": {"map": 0.9}}}))
    if failed:
        (d / "FAILED").write_text("exit code 1\n")
        (d / "train.log").write_text("Traceback …\n")
    return d


@pytest.mark.parametrize(
    "name,count",
    [("table1", 9), ("table2", 9), ("table3", 39), ("table4", 7), ("table5", 12), ("table6", 8), ("fig6", 12),
     ("smoke_grid", 4), ("results", 6)],
)
def test_presets_expand_to_the_papers_grids(name, count):
    exp = sweeps.load_experiment(name)
    runs = exp.runs("smoke", seeds=1)
    assert len(runs) == count
    assert len({r.run_id for r in runs}) == count  # every grid point has its own identity
    assert len(exp.runs("smoke", seeds=3)) == 3 * count


def test_table5_grid_is_loss_times_alpha_and_fig6_reuses_it():
    t5, f6 = sweeps.load_experiment("table5"), sweeps.load_experiment("fig6")
    assert t5.params == {"kd": ["mse", "mmd", "cwd", "cs"], "alpha": ["0.1", "0.5", "1"]}
    assert [r.run_id for r in f6.runs()] == [r.run_id for r in t5.runs()]
    assert f6.layout["figure"] == "fig6"


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ValueError, match="table5"):
        sweeps.load_experiment("table99")


def test_run_identity_depends_on_resolved_overrides_only():
    a = sweeps.Run("table5", (("kd", "cs"), ("alpha", "0.5")), "smoke", 0)
    b = sweeps.Run("table5", (("kd", "cs"), ("alpha", "0.5")), "smoke", 0)
    c = sweeps.Run("table5", (("kd", "cs"), ("alpha", "0.5")), "smoke", 1)
    assert a.run_id == b.run_id != c.run_id
    assert a.overrides == ["experiment=table5", "kd=cs", "alpha=0.5", "scale=smoke", "seed=0"]


def test_aggregation_of_fabricated_runs_with_a_failed_and_a_duplicated_run(tmp_path):
    exp = sweeps.load_experiment("table5")
    runs = exp.runs("smoke", seeds=2)
    for _i, run in enumerate(runs):
        p = dict(run.params)
        if p == {"kd": "mmd", "alpha": "1"} and run.seed == 1:
            _fabricate(run, tmp_path, None, failed=True)
            continue
        bump = 0.01 * run.seed + (0.05 if p["kd"] == "cs" and p["alpha"] == "0.5" else 0.0)
        _fabricate(run, tmp_path, {k: v + bump for k, v in FIVE.items()})
    # a stray copy of a finished run (e.g. copied by hand) must not be counted twice
    dup = runs[0].directory(tmp_path)
    (tmp_path / "runs" / (dup.name + "-copy")).mkdir()
    (tmp_path / "runs" / (dup.name + "-copy") / "metrics.json").write_text(json.dumps({"schema": METRICS_SCHEMA, "metrics": FIVE}))

    results = sweeps.collect_results(exp, tmp_path, "smoke", seeds=2)
    header, rows, failed = sweep_tables.build_table(exp, results)
    assert header == ["Method", "mAP", "mAP50", "mAR1", "mAR10", "mAR100"]
    assert [r[0] for r in rows][:3] == ["MSE, α = 0.1", "MSE, α = 0.5", "MSE, α = 1"]
    assert len(rows) == 12
    cs05 = rows[[r[0] for r in rows].index("CS, α = 0.5")]
    assert cs05[1] == "0.305 ± 0.007"  # mean(0.30, 0.31), sample std 0.00707
    mse01 = rows[0]
    assert mse01[1] == "0.255 ± 0.007"
    mmd1 = rows[[r[0] for r in rows].index("MMD, α = 1")]
    assert mmd1[1] == "0.250"  # only the seed-0 run finished
    assert [f.run.describe() for f in failed] == ["kd=mmd alpha=1 seed=1"]
    text = sweep_tables.write_outputs(exp, results, tmp_path / "out", "python sweep.py table5 seeds=2")
    assert "FAILED, log" in text and "train.log" in text
    assert (tmp_path / "out" / "table.csv").read_text().splitlines()[0] == "Method,mAP,mAP50,mAR1,mAR10,mAR100"
    assert (tmp_path / "out" / "fig6.png").stat().st_size > 10_000


def test_table3_comparison_columns_format_like_the_paper(tmp_path):
    exp = sweeps.load_experiment("table3")
    values = {"base": 0.219, "feature_kd_cs": 0.207, "proposed": 0.223}  # YOLOv5n row of the paper
    for run in exp.runs():
        p = dict(run.params)
        if p["model"] == "yolov6s":
            _fabricate(run, tmp_path, {**FIVE, "map": values[p["method"]]})
    header, rows, failed = sweep_tables.build_table(exp, sweeps.collect_results(exp, tmp_path, "smoke", 1))
    assert header == ["Model", "Base", "Feature-KD", "Proposed", "vs Base", "vs Feature-KD"]
    row = next(r for r in rows if r[0] == "YOLOv6s")
    assert row[1:] == ["0.219", "0.207", "0.223", "+0.004 (+1.8%)", "+0.016 (+7.7%)"]
    assert next(r for r in rows if r[0] == "YOLOv8n")[1] == "—"
    assert next(r for r in rows if r[0] == "RT-DETR")[1] == "—"
    assert len(failed) == 36  # missing runs are listed, not dropped (13 detectors x 3 methods - 3)


def _fake_train(tmp_path: Path, fail_marker: Path) -> str:
    script = tmp_path / "fake_train.py"
    script.write_text(
        "import json, sys, pathlib\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:])\n"
        "out = pathlib.Path(args['hydra.run.dir'])\n"
        f"if args.get('kd') == 'cwd' and pathlib.Path({str(fail_marker)!r}).exists():\n"
        "    sys.exit('simulated crash')\n"
        "with open(out.parent.parent / 'calls.txt', 'a') as f: f.write(out.name + '\\n')\n"
        "(out / 'argv.json').write_text(json.dumps(sys.argv[1:]))\n"
        "m = {k: float(args.get('alpha', '0.5')) for k in ('map','map_50','mar_1','mar_10','mar_100')}\n"
        f"(out / 'metrics.json').write_text(json.dumps({{'schema': {METRICS_SCHEMA!r}, 'metrics': m}}))\n"
    )
    return str(script)


def test_interrupted_sweep_resumes_without_lost_or_duplicated_runs(tmp_path, monkeypatch):
    fail_marker = tmp_path / "fail_cwd"
    fail_marker.write_text("1")
    script = _fake_train(tmp_path, fail_marker)
    monkeypatch.setattr(sweeps, "train_command",
                        lambda run, run_dir, extra=(): [sys.executable, script, *run.overrides,
                                                        f"hydra.run.dir={run_dir}"])
    exp = sweeps.load_experiment("table5")
    runs, lines = exp.runs("smoke", 1), []
    first = sweeps.launch(runs, tmp_path, "local", echo=lines.append)
    assert sum(r.failed for r in first) == 3  # the three cwd runs crashed
    assert any("FAILED" in line and "train.log" in line for line in lines)
    fail_marker.unlink()
    lines.clear()
    second = sweeps.launch(runs, tmp_path, "local", echo=lines.append)
    assert not any(r.failed for r in second)
    assert sum("skipped" in line for line in lines) == 9
    calls = (tmp_path / "calls.txt").read_text().split()
    assert len(calls) == 12 and len(set(calls)) == 12  # every run trained exactly once
    # a third call trains nothing
    sweeps.launch(runs, tmp_path, "joblib", n_jobs=2, echo=lines.append)
    assert len((tmp_path / "calls.txt").read_text().split()) == 12


def test_joblib_launcher_runs_in_parallel_and_collects(tmp_path, monkeypatch):
    script = _fake_train(tmp_path, tmp_path / "never")
    monkeypatch.setattr(sweeps, "train_command",
                        lambda run, run_dir, extra=(): [sys.executable, script, *run.overrides,
                                                        f"hydra.run.dir={run_dir}"])
    exp = sweeps.load_experiment("table6")
    results = sweeps.launch(exp.runs(), tmp_path, "joblib", n_jobs=2, echo=lambda _: None)
    assert len(results) == 8 and all(r.metrics == {k: 0.5 for k in sweeps.METRIC_KEYS} for r in results)


def test_every_run_starts_with_ckpt_path_auto_and_extra_overrides_win(tmp_path, monkeypatch):
    script = _fake_train(tmp_path, tmp_path / "never")
    monkeypatch.setenv(sweeps.TRAIN_COMMAND_ENV, f"{sys.executable} {script}")  # replaces python train.py
    run = sweeps.load_experiment("table5").runs()[0]
    sweeps.run_one(run, tmp_path, ["epochs=3"])
    argv = json.loads((run.directory(tmp_path) / "argv.json").read_text())
    assert argv[-3:] == ["ckpt_path=auto", "epochs=3", f"hydra.run.dir={run.directory(tmp_path)}"]
    assert argv[: len(run.overrides)] == run.overrides


def test_slurm_options_map_to_submitit_names_and_unknown_ones_are_rejected(tmp_path, monkeypatch):
    import submitit

    cluster, params = sweeps.slurm_parameters(
        {"partition": "gpu", "gpus_per_node": "1", "timeout_min": "240", "array_parallelism": "8"})
    assert cluster == "slurm"
    assert params == {"slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 240, "slurm_array_parallelism": 8}
    # submitit's SLURM executor only needs `srun` on PATH to be built; a stub is enough to check the names
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "s", cluster="slurm")
    executor.update_parameters(**params)
    assert executor._executor.parameters == {"partition": "gpu", "gpus_per_node": 1, "time": 240,
                                             "array_parallelism": 8}
    assert sweeps.slurm_parameters({"cluster": "local"}) == ("local", {"timeout_min": sweeps.DEFAULT_TIMEOUT_MIN})
    with pytest.raises(ValueError, match="slurm.gpus.*allowed: .*slurm.gpus_per_node"):
        sweeps.slurm_parameters({"gpus": "1"})
    with pytest.raises(ValueError, match="slurm.timeout_min='4h': expected int"):
        sweeps.slurm_parameters({"timeout_min": "4h"})
    with pytest.raises(ValueError, match="slurm.cluster"):
        sweeps.slurm_parameters({"cluster": "aws"})


def test_sweep_cli_rejects_an_unknown_slurm_option(capsys):
    spec = importlib.util.spec_from_file_location("sweep_cli", sweeps.project_root() / "sweep.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit):
        cli.parse(["table5", "launcher=slurm", "slurm.partiton=gpu"])
    assert "slurm.partiton" in capsys.readouterr().err
    _, options, extra = cli.parse(["table5", "launcher=slurm", "slurm.partition=gpu", "--", "epochs=3"])
    assert cli.slurm_options(options) == {"partition": "gpu"} and extra == ["epochs=3"]


def test_slurm_launcher_runs_through_submitits_local_executor(tmp_path, monkeypatch):
    """launcher=slurm end to end with slurm.cluster=local: the pickled _RequeueableRun runs in a submitit
    subprocess, which takes the training command from $FGKD_TRAIN_COMMAND (a monkeypatch would not reach it)."""
    script = _fake_train(tmp_path, tmp_path / "never")
    monkeypatch.setenv(sweeps.TRAIN_COMMAND_ENV, f"{sys.executable} {script}")
    runs = sweeps.load_experiment("table5").runs()[:3]
    lines: list[str] = []
    results = sweeps.launch(runs, tmp_path, "slurm", slurm={"cluster": "local", "timeout_min": "5"},
                            echo=lines.append)
    assert [r.metrics["map"] for r in results] == [float(dict(r.params)["alpha"]) for r in runs]
    assert any("submitted 3 jobs to local" in line for line in lines)
    assert sorted((tmp_path / "calls.txt").read_text().split()) == sorted(r.directory(tmp_path).name for r in runs)
    assert "ckpt_path=auto" in json.loads((runs[0].directory(tmp_path) / "argv.json").read_text())
    lines.clear()
    sweeps.launch(runs, tmp_path, "slurm", slurm={"cluster": "local"}, echo=lines.append)  # nothing left to do
    assert sum("skipped" in line for line in lines) == 3 and not any("submitted" in line for line in lines)


def test_extra_overrides_are_part_of_a_runs_identity(tmp_path):
    """Issue 15.14: `sweep.py smoke_grid -- epochs=2 imgsz=96` skipped the runs of the plain grid as finished."""
    exp = sweeps.load_experiment("smoke_grid")
    plain, changed = exp.runs("smoke"), exp.runs("smoke", extra=["epochs=2", "imgsz=96"])
    assert {r.run_id for r in plain}.isdisjoint({r.run_id for r in changed})
    assert [r.run_id for r in exp.runs("smoke", extra=["epochs=2", "ckpt_path=auto"])] == \
        [r.run_id for r in exp.runs("smoke", extra=["epochs=2"])]  # where to resume from shapes nothing
    for run in plain:
        _fabricate(run, tmp_path, FIVE)
    assert all(r.metrics for r in sweeps.collect_results(exp, tmp_path, "smoke", 1))
    assert not any(r.metrics for r in sweeps.collect_results(exp, tmp_path, "smoke", 1, ["epochs=2", "imgsz=96"]))
    command = sweeps.train_command(changed[0], tmp_path, ["ckpt_path=auto", "epochs=2", "imgsz=96"])
    assert command.count("epochs=2") == 1 and "ckpt_path=auto" in command


def test_a_run_locked_by_a_live_process_is_not_started_twice(tmp_path, monkeypatch):
    """Issue 15.13: after kill -9 of sweep.py its train.py child lived on and a rerun started a second one."""
    import fcntl

    run = sweeps.load_experiment("smoke_grid").runs()[0]
    run_dir = run.directory(tmp_path)
    run_dir.mkdir(parents=True)
    started = []
    monkeypatch.setattr(sweeps.subprocess, "run", lambda *a, **k: started.append(a))
    with open(run_dir / sweeps.RUN_LOCK, "a+") as held:  # a live train.py of an earlier sweep holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = sweeps.run_one(run, tmp_path)
    assert result.running_elsewhere and not result.failed and result.metrics is None and not started
    assert not (run_dir / "train.log").exists() and not (run_dir / "FAILED").exists()
    lines = []
    with open(run_dir / sweeps.RUN_LOCK, "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        sweeps.launch([run], tmp_path, "local", echo=lines.append)
    assert "running elsewhere" in lines[-1]


def test_ctrl_c_ends_a_sweep_with_one_line(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_entry", Path(__file__).resolve().parents[1] / "sweep.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeps, "launch", interrupted)
    assert entry.main(["smoke_grid"]) == 130
    out = capsys.readouterr().out
    assert "interrupted: finished runs are kept" in out and "Traceback" not in out


def test_ad_mtd_rows_are_the_models_with_mean_std_over_seeds_and_the_baseline_row(tmp_path):
    exp = sweeps.load_experiment("ad_mtd")
    assert exp.task == "anomaly" and exp.params == {"model": ["rd", "rd2t", "bsdrd", "bsdrd_struct", "bsdrd_detail",
                                                              "bsdrd_no_mdgf"]}
    runs = exp.runs("smoke", seeds=2)
    assert len(runs) == 12
    for run in runs:
        d = run.directory(tmp_path)
        d.mkdir(parents=True)
        score = 0.6 + 0.1 * run.seed + (0.05 if dict(run.params)["model"] == "bsdrd" else 0.0)
        baseline = {"image_auroc": 0.5 + 0.2 * run.seed, "pixel_auroc": 0.7, "aupro": 0.2}
        (d / "metrics.json").write_text(json.dumps({
            "schema": METRICS_SCHEMA, "metrics": {"image_auroc": score, "pixel_auroc": 0.8, "aupro": 0.3},
            "extras": {"baseline": baseline}}))
    header, rows, failed = sweep_tables.build_table(exp, sweeps.collect_results(exp, tmp_path, "smoke", seeds=2))
    assert header[:4] == ["Model", "I-AUROC", "P-AUROC", "AUPRO"] and not failed
    labels = [r[0] for r in rows]
    assert labels[:3] == ["RD4AD", "two-teacher RD (paper 001)", "BSDRD (struct + detail, MD-GFLoss)"]
    assert rows[2][1] == "0.700 ± 0.071"  # mean(0.65, 0.75), sample std
    assert labels[-1] == sweep_tables.BASELINE_ROW and rows[-1][1] == "0.600 ± 0.141"  # one baseline per seed


def _test_block(map_value: float, views: tuple[str, ...] = ("original",)) -> dict:
    metrics = {**FIVE, "map": map_value}
    return {"split": "test", "metrics": metrics, "images": 120, "views": {v: {"metrics": metrics} for v in views}}


def test_results_table_pairs_each_method_with_base_per_seed_on_the_test_split(tmp_path):
    exp = sweeps.load_experiment("results")
    assert exp.params == {"model": ["yolov8n", "yolov6n"], "method": ["base", "feature_kd_cs", "proposed_rb_sf"]}
    runs = exp.runs("dev", seeds=3)
    assert len(runs) == 18
    test_map = {"base": (0.20, 0.22, 0.21), "feature_kd_cs": (0.20, 0.23, 0.21), "proposed_rb_sf": (0.21, 0.24, 0.24)}
    for run in runs:
        p = dict(run.params)
        if p["model"] == "yolov6n" and p["method"] == "proposed_rb_sf" and run.seed == 2:
            continue  # not finished: left out of its row and of the pairing
        d = run.directory(tmp_path)
        d.mkdir(parents=True)
        teacher = None
        if p["method"] != "base":  # one teacher shared by the three seeds (teacher.seed 0): one teacher row each
            views = ("preprocessed", "original") if p["method"] == "proposed_rb_sf" else ("original",)
            teacher = {"key": f"{p['model']}-{p['method']}", "metrics": {"map": 0.9}, "test": _test_block(0.5, views)}
        (d / "metrics.json").write_text(json.dumps({
            "schema": METRICS_SCHEMA, "metrics": {**FIVE, "map": 0.99},  # val numbers: never in this table
            "teacher": teacher, "test": _test_block(test_map[p["method"]][run.seed])}))
    header, rows, failed = sweep_tables.build_table(exp, sweeps.collect_results(exp, tmp_path, "dev", seeds=3))
    assert header[:3] == ["Detector", "Method", "mAP"] and header[-3:] == ["Δ mAP vs Base training (paired)",
                                                                           "Δ / base", "p (paired t)"]
    assert len(failed) == 1
    by = {(r[0], r[1]): r for r in rows}
    base = by[("YOLOv8n", "Base training")]
    assert base[2] == "0.210 ± 0.010" and base[7] == "3" and base[-3:] == ["", "", ""]
    proposed = by[("YOLOv8n", "Proposed (RB & SF, CS, α 0.5)")]
    # per-seed Δ = 0.01, 0.02, 0.03: mean 0.02, std 0.01; 0.02 / 0.21 = +9.5 %; paired t = 0.02 / (0.01 / √3), df 2,
    # two-sided p = 1 - t / √(t² + 2) = 0.074
    assert proposed[2] == "0.230 ± 0.017" and proposed[-3:] == ["+0.020 ± 0.010", "+9.5 %", "0.07"]
    assert by[("YOLOv8n", "Feature KD-CS (teacher on X)")][-3:-1] == ["+0.003 ± 0.006", "+1.6 %"]
    # the unfinished seed: two seeds in the row, pairs over the seeds both rows have (0.01, 0.02 over 0.20, 0.22)
    v6 = by[("YOLOv6n", "Proposed (RB & SF, CS, α 0.5)")]
    assert v6[7] == "2" and v6[-3:-1] == ["+0.015 ± 0.007", "+7.1 %"]
    teacher_rows = [r[1] for r in rows if r[0] == "YOLOv8n" and r[1].startswith("its teacher")]
    assert teacher_rows == ["its teacher on X: Feature KD-CS (teacher on X)",
                            "its teacher on X_M: Proposed (RB & SF, CS, α 0.5)",
                            "its teacher on X: Proposed (RB & SF, CS, α 0.5)"]
    assert by[("YOLOv8n", teacher_rows[1])][2] == "0.500" and by[("YOLOv8n", teacher_rows[1])][7] == "1 teacher"
    sweep_tables.write_outputs(exp, sweeps.collect_results(exp, tmp_path, "dev", seeds=3), tmp_path / "out", "cmd")
    assert (tmp_path / "out" / "results.png").stat().st_size > 10_000


def test_results_table_refuses_runs_without_a_test_split(tmp_path):
    exp = sweeps.load_experiment("results")
    run = exp.runs("dev", seeds=1)[0]
    d = run.directory(tmp_path)
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"schema": METRICS_SCHEMA, "metrics": FIVE, "test": None}))
    header, rows, failed = sweep_tables.build_table(exp, sweeps.collect_results(exp, tmp_path, "dev", seeds=1))
    assert [r.run for r in failed if r.metrics is not None] == [run]  # finished, but nothing to report: listed
    assert rows[0][2] == "—"
