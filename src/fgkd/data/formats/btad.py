"""BTAD layout: ``<root>/{01,02,03}/train/ok/*``, ``test/ok/*``, ``test/ko/*`` and
``ground_truth/ko/<stem>.png`` (category 03: ``.bmp``; either suffix is accepted for every category)."""

from __future__ import annotations

import os
from pathlib import Path

from fgkd.data.formats.anomaly_index import AnomalyIndex, index_category_folders
from fgkd.data.formats.anomaly_index import list_categories as list_folder_categories

NORMAL = "ok"
CATEGORIES = ("01", "02", "03")


def list_categories(root: str | os.PathLike) -> list[str]:
    return list_folder_categories(root, NORMAL)


def _mask_for(category_dir: Path, defect: str, image: Path) -> Path:
    folder = category_dir / "ground_truth" / defect
    preferred = (".bmp", ".png") if category_dir.name == "03" else (".png", ".bmp")
    for suffix in preferred:
        if (folder / f"{image.stem}{suffix}").is_file():
            return folder / f"{image.stem}{suffix}"
    return folder / f"{image.stem}{preferred[0]}"


def index_btad(root: str | os.PathLike, category: str, *, skip_bad: bool = False) -> AnomalyIndex:
    """The train (``ok`` only) and test samples of one BTAD category."""
    return index_category_folders(root, category, layout="btad", normal=NORMAL, mask_for=_mask_for,
                                  skip_bad=skip_bad)
