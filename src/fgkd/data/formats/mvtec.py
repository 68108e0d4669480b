"""MVTec AD layout: ``<root>/<category>/train/good/*``, ``test/<defect>/*`` (``good`` = normal) and
``ground_truth/<defect>/<stem>_mask.png`` (``<stem>.png`` accepted too); no ``ground_truth/good``."""

from __future__ import annotations

import os
from pathlib import Path

from fgkd.data.formats.anomaly_index import AnomalyIndex, index_category_folders
from fgkd.data.formats.anomaly_index import list_categories as list_folder_categories

NORMAL = "good"


def list_categories(root: str | os.PathLike) -> list[str]:
    return list_folder_categories(root, NORMAL)


def _mask_for(category_dir: Path, defect: str, image: Path) -> Path:
    folder = category_dir / "ground_truth" / defect
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (folder / name).is_file():
            return folder / name
    return folder / f"{image.stem}_mask.png"


def index_mvtec(root: str | os.PathLike, category: str, *, skip_bad: bool = False) -> AnomalyIndex:
    """The train (normal only) and test samples of one MVTec AD category."""
    return index_category_folders(root, category, layout="mvtec", normal=NORMAL, mask_for=_mask_for,
                                  skip_bad=skip_bad)
