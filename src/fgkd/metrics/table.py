"""Fixed-width result tables for the terminal (``train.py``): any task's columns and their paper headers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def format_table(rows: Mapping[str, Mapping[str, Any]] | Mapping[str, Any], columns: Sequence[str],
                 display: Mapping[str, str] | None = None, digits: int = 3) -> str:
    """``rows``: ``{row_name: {column: value}}`` or one metrics mapping (printed as the row "result");
    missing values print as nan; headers are ``display[column]`` (default the column key)."""
    if all(not isinstance(v, Mapping) for v in rows.values()):
        rows = {"result": rows}  # type: ignore[dict-item]
    display = display or {}
    width = max([7] + [len(display.get(c, c)) for c in columns])
    label_width = max([len("run")] + [len(str(k)) for k in rows])
    header = f"{'run':<{label_width}}  " + "  ".join(f"{display.get(c, c):>{width}}" for c in columns)
    lines = [header, "-" * len(header)]
    for label, metrics in rows.items():
        cells = "  ".join(f"{float(metrics.get(c, math.nan)):>{width}.{digits}f}" for c in columns)  # type: ignore[union-attr]
        lines.append(f"{str(label):<{label_width}}  {cells}")
    return "\n".join(lines)
