"""Run a paper ablation grid (conf/experiment/<name>.yaml) and print its table.

    python sweep.py table5 [scale=smoke|dev|paper] [seeds=3] [launcher=local|joblib|slurm] [n_jobs=2]
                    [--collect] [--dir DIR] [-- extra train.py overrides …]

Only missing runs are launched (a run is finished when its metrics.json exists), so an interrupted sweep
resumes without lost or duplicated runs. `--collect` only aggregates. Slurm options: slurm.partition=…,
slurm.gpus_per_node=…, slurm.timeout_min=…, slurm.array_parallelism=… (passed to submitit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fgkd import sweeps


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
    allowed = {"scale", "seeds", "launcher", "n_jobs"}
    unknown = [k for k in options if k not in allowed and not k.startswith("slurm.")]
    if unknown:
        parser.error(f"unknown option(s) {unknown}; allowed: {sorted(allowed)} and slurm.<key>")
    if options.get("scale", "smoke") not in sweeps.SCALES:
        parser.error(f"scale must be one of {sweeps.SCALES}")
    if options.get("launcher", "local") not in sweeps.LAUNCHERS:
        parser.error(f"launcher must be one of {sweeps.LAUNCHERS}")
    return args, options, extra


def main(argv: list[str] | None = None) -> int:
    args, options, extra = parse(sys.argv[1:] if argv is None else argv)
    exp = sweeps.load_experiment(args.experiment)
    scale, seeds = options.get("scale", "smoke"), int(options.get("seeds", 1))
    sweep_dir = args.dir or sweeps.REPO_ROOT / "outputs" / "sweeps" / exp.name / scale
    out_dir = sweep_dir if args.dir else sweeps.REPO_ROOT / "outputs" / "sweeps" / args.experiment / scale
    runs = exp.runs(scale, seeds)
    command = "python sweep.py " + " ".join([args.experiment, *(f"{k}={v}" for k, v in options.items())])
    if not args.collect:
        slurm = {k.split(".", 1)[1]: _number(v) for k, v in options.items() if k.startswith("slurm.")}
        if "array_parallelism" in slurm:
            slurm["slurm_array_parallelism"] = slurm.pop("array_parallelism")
        print(f"{exp.name}: {len(runs)} runs in {sweep_dir}", flush=True)
        sweeps.launch(runs, sweep_dir, options.get("launcher", "local"), extra,
                      n_jobs=int(options.get("n_jobs", 2)), slurm=slurm,
                      echo=lambda line: print(line, flush=True))
    results = sweeps.collect_results(exp, sweep_dir, scale, seeds)
    text = sweeps.write_outputs(exp, results, out_dir, command)
    print(text)
    print(f"wrote {out_dir / 'table.md'} and {out_dir / 'table.csv'}"
          + (f" and {out_dir / 'fig6.png'}" if exp.layout.get("figure") == "fig6" else ""))
    return 1 if any(r.failed for r in results) else 0


def _number(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


if __name__ == "__main__":
    sys.exit(main())
