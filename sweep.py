"""Run a paper ablation grid (conf/experiment/<name>.yaml) and print its table.

    python sweep.py table5 [scale=smoke|dev|paper] [seeds=3] [launcher=local|joblib|slurm] [n_jobs=2]
                    [wandb=true] [--collect] [--dir DIR] [-- extra train.py overrides …]

Only missing runs are launched (a run is finished when its metrics.json exists) and each run starts with
ckpt_path=auto, so an interrupted sweep resumes without lost or duplicated runs, a half-trained run from
its last epoch. `--collect` only aggregates. ``wandb=true`` also logs the table (a W&B Table) and the figures to one W&B run of
``job_type`` sweep in the experiment's group (the group of its training runs too); offline without credentials.

launcher=slurm submits a job array through submitit; a pre-empted or timed-out job is requeued and resumes.
Options: slurm.partition=… slurm.gpus_per_node=… slurm.timeout_min=… (default 60) slurm.array_parallelism=…
slurm.cpus_per_task=… slurm.mem_gb=… slurm.account=… slurm.qos=… slurm.constraint=… slurm.name=…;
slurm.cluster=local runs the same jobs through submitit's local executor on this machine.
$FGKD_TRAIN_COMMAND replaces `python train.py` for every run (e.g. "torchrun --nproc_per_node 2 train.py").
    python sweep.py table5 launcher=slurm slurm.partition=gpu slurm.gpus_per_node=1 slurm.timeout_min=240 \
        slurm.array_parallelism=8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fgkd import sweep_tables, sweeps
from fgkd.paths import outputs_root


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="table1 … table6 or fig6 (files in conf/experiment/)")
    parser.add_argument("options", nargs="*", help="scale=… seeds=… launcher=… n_jobs=… slurm.KEY=…")
    parser.add_argument("--collect", action="store_true", help="only aggregate existing runs")
    parser.add_argument("--dir", type=Path, default=None, help="sweep folder (default outputs/sweeps/<name>)")
    args = parser.parse_args(argv)
    options = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"expected key=value, got {item!r}")
        options[key] = value
    allowed = {"scale", "seeds", "launcher", "n_jobs", "wandb"}
    unknown = [k for k in options if k not in allowed and not k.startswith("slurm.")]
    if unknown:
        parser.error(f"unknown option(s) {unknown}; allowed: {sorted(allowed)} and slurm.<key>")
    if options.get("scale", "smoke") not in sweeps.SCALES:
        parser.error(f"scale must be one of {sweeps.SCALES}")
    if options.get("wandb", "false") not in ("true", "false"):
        parser.error("wandb must be true or false")
    if options.get("launcher", "local") not in sweeps.LAUNCHERS:
        parser.error(f"launcher must be one of {sweeps.LAUNCHERS}")
    try:
        sweeps.slurm_parameters(slurm_options(options))
    except ValueError as err:
        parser.error(str(err))
    return args, options, extra


def slurm_options(options: dict[str, str]) -> dict[str, str]:
    return {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith("slurm.")}


def main(argv: list[str] | None = None) -> int:
    args, options, extra = parse(sys.argv[1:] if argv is None else argv)
    exp = sweeps.load_experiment(args.experiment)
    scale, seeds = options.get("scale", "smoke"), int(options.get("seeds", 1))
    sweep_dir = args.dir or outputs_root() / "sweeps" / exp.name / scale
    out_dir = sweep_dir if args.dir else outputs_root() / "sweeps" / args.experiment / scale
    runs = exp.runs(scale, seeds, extra)
    command = "python sweep.py " + " ".join([args.experiment, *(f"{k}={v}" for k, v in options.items())])
    if not args.collect:
        print(f"{exp.name}: {len(runs)} runs in {sweep_dir}", flush=True)
        try:
            sweeps.launch(runs, sweep_dir, options.get("launcher", "local"), extra,
                          n_jobs=int(options.get("n_jobs", 2)), slurm=slurm_options(options),
                          echo=lambda line: print(line, flush=True), keys=exp.metric_keys, names=exp.metric_names)
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished runs are kept in {sweep_dir}; the same command continues the sweep "
                  "(an interrupted run resumes from its last.ckpt)", flush=True)
            return 130
    results = sweeps.collect_results(exp, sweep_dir, scale, seeds, extra)
    text = sweep_tables.write_outputs(exp, results, out_dir, command)
    print(text)
    figures = [name for name in ("fig6.png", "results.png") if (out_dir / name).is_file()]
    print(f"wrote {out_dir / 'table.md'} and {out_dir / 'table.csv'}" + "".join(f" and {out_dir / f}" for f in figures))
    if options.get("wandb") == "true":
        sweep_tables.log_wandb(exp, results, out_dir, command)
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
