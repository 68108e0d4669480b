"""``results.png``: the training losses and the task's metrics per validated epoch of one fit (from
``metrics.json["history"]``: ``train/*`` keys are the losses, one panel; then one panel per metric)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fgkd.io import atomic_save

RESULTS_FILE = "results.png"


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str],
                 display: Mapping[str, str] | None = None, title: str = "") -> Path | None:
    """One panel per metric column (and its ``baseline_<column>`` as a dashed line when recorded); the epoch
    reported in ``metrics.json`` is marked. Nothing is written for an empty history."""
    records = [r for r in history if "epoch" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    display = display or {}
    shown = [c for c in columns if any(c in r for r in records)]
    losses = sorted({k for r in records for k in r if k.startswith("train/")})
    panels = len(shown) + (1 if losses else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(3.0 * max(panels, 1), 2.8), squeeze=False, dpi=110)
    epochs = [int(r["epoch"]) + 1 for r in records]
    if losses:
        ax = axes[0, 0]
        for key in losses:
            ax.plot(epochs, [float(r.get(key, math.nan)) for r in records], marker="o", markersize=2,
                    label=key.removeprefix("train/"))
        ax.set_title("training losses", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax, column in zip(axes[0][1 if losses else 0:], shown, strict=False):
        values = [float(r.get(column, math.nan)) for r in records]
        ax.plot(epochs, values, marker="o", markersize=3, label="model")
        if any(f"baseline_{column}" in r for r in records):
            ax.plot(epochs, [float(r.get(f"baseline_{column}", math.nan)) for r in records], "--", label="baseline")
            ax.legend(fontsize=7)
        ax.set_title(display.get(column, column), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_save(path, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)
    return path
