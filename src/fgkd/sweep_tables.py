"""The tables and figures of a sweep (``outputs/sweeps/<name>/table.{md,csv}``, ``fig6.png``, ``results.png``).

The ``sweep`` block of ``conf/experiment/<name>.yaml`` picks the layout: the default (one row per grid point,
mean ± std over seeds), ``kind: comparison`` (Table 3: models × methods on mAP), ``kind: per_category``
(anomaly: categories × models) and ``kind: paired`` (the results protocol: per detector, each method against
the baseline method with the per-seed paired difference, on the held-out test split; :func:`paired_table`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgkd.io import atomic_open, atomic_save, atomic_write

if TYPE_CHECKING:
    from fgkd.sweeps import Experiment, Run, RunResult


def _label(run: Run, layout: dict[str, Any], keys: Iterable[str]) -> str:
    labels = layout.get("labels") or {}
    values = {k.split(".")[-1].lstrip("+~"): str(labels.get(k, {}).get(v, v)) for k, v in run.params if k in keys}
    template = layout.get("row")
    if template:
        return template.format(**values)
    return ", ".join(values.values())


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _fmt(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def _signed_change(new: float, old: float) -> str:
    rel = f"{(new - old) / old * 100:+.1f}%" if old else "n/a"
    return f"{new - old:+.3f} ({rel})"


def build_table(exp: Experiment, results: list[RunResult]) -> tuple[list[str], list[list[str]], list[RunResult]]:
    """(header, rows, failed): the paper's layout; ``failed`` lists runs without metrics."""
    layout = exp.layout
    failed = [r for r in results if r.metrics is None]
    if layout.get("kind") == "paired":
        header, rows = paired_table(exp, results)
        return header, rows, failed + [r for r in results if r.metrics is not None and _reported(r) is None]
    if layout.get("kind") == "comparison":  # Table 3: rows = models, columns = methods on mAP
        row_key, col_key = layout["row_key"], layout["column_key"]
        columns = [c for c in exp.params[col_key]]
        names = layout.get("labels", {}).get(col_key, {})
        grouped: dict[str, dict[str, list[float]]] = {}
        for r in results:
            p = dict(r.run.params)
            cell = grouped.setdefault(p[row_key], {}).setdefault(p[col_key], [])
            if r.metrics:
                cell.append(r.metrics["map"])
        header = [layout.get("row_title", "Model")] + [names.get(c, c) for c in columns]
        comparisons = layout.get("comparisons", [])  # [[new, old], ...] column ids
        header += [f"vs {names.get(old, old)}" for _, old in comparisons]
        rows = []
        for model in exp.params[row_key]:
            cells = grouped.get(model, {})
            row = [layout.get("labels", {}).get(row_key, {}).get(model, model)]
            row += [_fmt(cells[c]) if cells.get(c) else "—" for c in columns]
            for new, old in comparisons:
                if cells.get(new) and cells.get(old):
                    row.append(_signed_change(_mean_std(cells[new])[0], _mean_std(cells[old])[0]))
                else:
                    row.append("—")
            rows.append(row)
        return header, rows, failed
    if layout.get("kind") == "per_category":
        return _per_category_table(exp, results) + (failed,)
    keys, names = exp.metric_keys, exp.metric_names
    row_keys = [k for k in exp.params if k != "seed"]
    grouped_rows: dict[str, list[RunResult]] = {}
    for r in results:
        grouped_rows.setdefault(_label(r.run, layout, row_keys), [])
        if r.metrics:
            grouped_rows[_label(r.run, layout, row_keys)].append(r)
    header = [layout.get("row_title", "Method"), *names]
    if layout.get("group_means"):  # anomaly: paper 001's "Average" = mean of the texture and object means
        header += [f"{name} (T/O)" for name in names]
    paper = layout.get("paper") or {}
    if paper:
        header.append("paper")
    rows = []
    for label, done in grouped_rows.items():
        row = [label] + ([_fmt([r.metrics[k] for r in done]) for k in keys] if done else ["—"] * len(keys))
        if layout.get("group_means"):
            means = [_group_mean(r) for r in done]
            row += [_fmt([m[k] for m in means if m]) if any(means) else "—" for k in keys]
        if paper:
            row.append(str(paper.get(label, "—")))
        rows.append(row)
    baseline = _baseline_per_seed(results) if exp.task == "anomaly" else []
    if baseline:  # the data's trivial baseline: the same for every model, one value per seed
        row = [BASELINE_ROW] + [_fmt([b[k] for b in baseline if k in b]) for k in keys]
        row += ["—"] * (len(header) - len(row))
        rows.append(row)
    return header, rows, failed


BASELINE_ROW = "trivial baseline (distance to the mean train image)"


def _baseline_per_seed(results: list[RunResult]) -> list[dict[str, float]]:
    seen: dict[int, dict[str, float]] = {}
    for r in results:
        baseline = ((r.payload or {}).get("extras") or {}).get("baseline")
        if baseline and r.run.seed not in seen:
            seen[r.run.seed] = {k: float(v) for k, v in baseline.items()}
    return list(seen.values())


def _group_mean(result: RunResult) -> dict[str, float] | None:
    groups = ((result.payload or {}).get("extras") or {}).get("group_means") or {}
    return groups.get("mean_of_groups")


def _per_category_table(exp: Experiment, results: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Rows = categories (then the class mean and the texture/object mean), columns = models × metrics, each
    cell ``I / P / PRO`` (paper 001 Tables 1-3 side by side)."""
    layout = exp.layout
    keys = exp.metric_keys
    row_keys = [k for k in exp.params if k != "seed"]
    columns: dict[str, RunResult] = {}
    for r in results:
        columns.setdefault(_label(r.run, layout, row_keys), r)
    categories: list[str] = []
    for r in columns.values():
        for name in (r.payload or {}).get("per_class") or {}:
            if name not in categories:
                categories.append(name)

    def cell(values: dict[str, float] | None) -> str:
        return " / ".join(f"{values[k]:.3f}" for k in keys) if values else "—"

    header = [layout.get("row_title", "Category")] + [f"{label} ({' / '.join(exp.metric_names)})" for label in columns]
    rows = [[name] + [cell(((r.payload or {}).get("per_class") or {}).get(name)) for r in columns.values()]
            for name in categories]
    rows.append([f"mean ({len(categories)} classes)"] + [cell(r.metrics) for r in columns.values()])
    rows.append(["mean of texture/object means"] + [cell(_group_mean(r)) for r in columns.values()])
    paper = layout.get("paper") or {}
    if paper:
        rows.append(["paper"] + [str(paper.get(dict(r.run.params).get("model", ""), "—")) for r in columns.values()])
    return header, rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(exp: Experiment, results: list[RunResult], out_dir: Path, command: str) -> str:
    header, rows, failed = build_table(exp, results)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = f"{exp.layout.get('title', exp.name)}\n\n" + to_markdown(header, rows)
    text += f"\nCommand: `{command}`\n"
    if failed:
        text += "\nRuns without results (failed or not run yet):\n"
        text += "".join(f"- {r.run.describe()}: {'FAILED, log ' + str(r.log) if r.failed else 'missing'}\n"
                        for r in failed)
    atomic_write(out_dir / "table.md", text)
    with atomic_open(out_dir / "table.csv", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    if exp.layout.get("figure") == "fig6":
        plot_fig6(exp, results, out_dir / "fig6.png", command)
    if exp.layout.get("kind") == "paired":
        plot_paired(exp, results, out_dir / "results.png", command)
    return text


def plot_fig6(exp: Experiment, results: list[RunResult], path: Path, command: str) -> None:
    """Fig. 6: mAP against α, one line per KD loss (mean over seeds, std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = exp.layout.get("labels", {}).get("kd", {})
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    for loss in exp.params["kd"]:
        xs, ys, es = [], [], []
        for alpha in exp.params["alpha"]:
            values = [r.metrics["map"] for r in results if r.metrics
                      and dict(r.run.params).get("kd") == loss and dict(r.run.params).get("alpha") == alpha]
            if values:
                mean, std = _mean_std(values)
                xs.append(float(alpha)), ys.append(mean), es.append(std)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=labels.get(loss, loss))
    ax.set_xlabel("α")
    ax.set_ylabel("mAP")
    ax.set_title("mAP vs α per KD loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, command, fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    atomic_save(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)


# ------------------------------------------------------------------------------- the results protocol (paired)
def _reported(result: RunResult) -> dict[str, float] | None:
    """The numbers a ``kind: paired`` table reports: the held-out test split's (``metrics.json["test"]``), never
    the validation split that chose the epoch; None when the run has not finished or its data has no test split."""
    test = (result.payload or {}).get("test") if result.metrics is not None else None
    return {k: float(v) for k, v in test["metrics"].items()} if test else None


def _paired_cells(new: Mapping[int, Mapping[str, float]], old: Mapping[int, Mapping[str, float]], key: str) -> list[str]:
    """Δ = new − old per seed both have (mean ± std), Δ relative to old's mean, two-sided paired t-test p."""
    seeds = sorted(set(new) & set(old))
    if not seeds:
        return ["—", "—", "—"]
    diffs = [new[s][key] - old[s][key] for s in seeds]
    mean, std = _mean_std(diffs)
    base = _mean_std([old[s][key] for s in seeds])[0]
    rel = f"{mean / base * 100:+.1f} %" if base else "n/a"
    p = "n/a"
    if len(seeds) > 1 and std > 0:
        from scipy.stats import ttest_rel

        p = f"{float(ttest_rel([new[s][key] for s in seeds], [old[s][key] for s in seeds]).pvalue):.2f}"
    return [f"{mean:+.3f} ± {std:.3f}" if len(seeds) > 1 else f"{mean:+.3f}", rel, p]


def _view_name(view: str) -> str:
    return "X_M" if view == "preprocessed" else "X"


def _paired_values(exp: Experiment, results: list[RunResult]) -> tuple[dict, dict]:
    """``values[group][method][seed]`` = reported metrics; ``teachers[group][(method, view)][teacher]`` = the
    teacher's test metrics through ``view`` (one entry per distinct teacher: students of several seeds may share one)."""
    group_key, row_key = exp.layout["group_key"], exp.layout["row_key"]
    values: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    teachers: dict[str, dict[tuple[str, str], dict[str, dict[str, float]]]] = {}
    for r in results:
        reported = _reported(r)
        if reported is None:
            continue
        params = dict(r.run.params)
        group, method = params[group_key], params[row_key]
        values.setdefault(group, {}).setdefault(method, {})[r.run.seed] = reported
        teacher = (r.payload or {}).get("teacher") or {}
        for view, entry in (((teacher.get("test") or {}).get("views")) or {}).items():
            by_teacher = teachers.setdefault(group, {}).setdefault((method, view), {})
            by_teacher[str(teacher.get("key") or r.directory)] = {k: float(v) for k, v in entry["metrics"].items()}
    return values, teachers


def paired_table(exp: Experiment, results: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Per group (detector): one row per method (mean ± std over seeds on the test split) with the paired
    difference to the baseline method (per seed, then mean ± std), its size relative to the baseline's mean and a
    two-sided paired t-test p-value; then the teachers of the distilled rows on X_M and X (Tables 1-2 shape)."""
    layout = exp.layout
    keys, names = exp.metric_keys, exp.metric_names
    group_key, row_key, baseline = layout["group_key"], layout["row_key"], layout["baseline"]
    labels = layout.get("labels") or {}
    values, teachers = _paired_values(exp, results)
    base_name = labels.get(row_key, {}).get(baseline, baseline)
    header = [layout.get("group_title", "Detector"), layout.get("row_title", "Method"), *names, "seeds",
              f"Δ {names[0]} vs {base_name} (paired)", "Δ / base", "p (paired t)"]
    rows: list[list[str]] = []
    for group in exp.params[group_key]:
        group_label = str(labels.get(group_key, {}).get(group, group))
        methods = values.get(group, {})
        for method in exp.params[row_key]:
            runs = methods.get(method, {})
            row = [group_label, str(labels.get(row_key, {}).get(method, method))]
            row += [_fmt([m[k] for m in runs.values()]) for k in keys] if runs else ["—"] * len(keys)
            row.append(str(len(runs)))
            row += ["", "", ""] if method == baseline else _paired_cells(runs, methods.get(baseline, {}), keys[0])
            rows.append(row)
        for method in exp.params[row_key]:
            for view in ("preprocessed", "original"):
                by_teacher = teachers.get(group, {}).get((method, view))
                if not by_teacher:
                    continue
                label = f"its teacher on {_view_name(view)}: {labels.get(row_key, {}).get(method, method)}"
                # the seeds column counts teacher cache entries here (one when the students share one teacher)
                count = f"{len(by_teacher)} teacher" + ("s" if len(by_teacher) > 1 else "")
                rows.append([group_label, label, *(_fmt([m[k] for m in by_teacher.values()]) for k in keys),
                             count, "", "", ""])
    return header, rows


def plot_paired(exp: Experiment, results: list[RunResult], path: Path, command: str) -> None:
    """``results.png``: the first metric per method and group, every seed as a dot, mean ± std as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = exp.layout
    group_key, row_key = layout["group_key"], layout["row_key"]
    labels = layout.get("labels") or {}
    values, _ = _paired_values(exp, results)
    groups, methods = exp.params[group_key], exp.params[row_key]
    key, name = exp.metric_keys[0], exp.metric_names[0]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1, 3.6), dpi=150, squeeze=False,
                             sharey=True)
    for ax, group in zip(axes[0], groups, strict=True):
        for i, method in enumerate(methods):
            points = [m[key] for m in values.get(group, {}).get(method, {}).values()]
            if not points:
                continue
            mean, std = _mean_std(points)
            ax.bar(i, mean, yerr=std, capsize=4, color=f"C{i}", alpha=0.55)
            ax.scatter([i] * len(points), points, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([str(labels.get(row_key, {}).get(m, m)).split(" (")[0] for m in methods], rotation=20,
                           fontsize=7, ha="right")
        ax.set_title(str(labels.get(group_key, {}).get(group, group)), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{name} (held-out test split)")
    fig.text(0.01, 0.01, command, fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    atomic_save(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)


def log_wandb(exp: Experiment, results: list[RunResult], out_dir: Path, command: str) -> Path:
    """``sweep.py … wandb=true``: one W&B run (``job_type`` sweep, ``group`` the experiment, as its training runs)
    holding the table as a W&B Table and the sweep's figures; offline without credentials. Returns its folder."""
    import wandb

    from fgkd.engine import wandb_has_credentials

    header, rows, _ = build_table(exp, results)
    online = wandb_has_credentials()
    run = wandb.init(project="fgkd", group=exp.name, job_type="sweep", name=f"{exp.name} table", dir=str(out_dir),
                     mode="online" if online else "offline", reinit="finish_previous",
                     config={"experiment": exp.name, "command": command, "grid": exp.params, "layout": exp.layout})
    payload: dict[str, Any] = {"table": wandb.Table(columns=header, data=rows)}
    for figure in ("fig6.png", "results.png"):
        if (out_dir / figure).is_file():
            payload[figure.removesuffix(".png")] = wandb.Image(str(out_dir / figure))
    run.log(payload)
    folder = Path(run.dir).parent
    run.finish()
    if not online:
        print(f"W&B ran offline; upload with: wandb sync {folder}")
    return folder
