"""The in-memory index every anomaly layout (MVTec AD, BTAD; MTD and the synthetic defaults later) is read into.

A sample's label comes from its folder (``good`` / ``ok`` = normal, any other = defective), never from its
mask: an all-zero mask of a defective image keeps the image defective and is counted in the report. Each
defective test image must have a mask of its own size; a normal one has none (an all-zero map).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fgkd.data.formats.common import DataError
from fgkd.data.imageio import IMAGE_SUFFIXES, BadImageError, probe_size, read_mask


@dataclass(frozen=True)
class AnomalySample:
    image: Path
    split: str  # train | test
    defect: str  # the folder: good/ok for normal images, else the defect type
    label: int  # 0 normal, 1 defective (from the folder)
    mask: Path | None  # defective test images only


@dataclass
class AnomalyIndex:
    layout: str
    category: str
    root: Path
    train: list[AnomalySample] = field(default_factory=list)
    test: list[AnomalySample] = field(default_factory=list)
    #: what was skipped or is worth a look: unreadable files (skip_bad), defective images with empty masks
    counts: dict[str, int] = field(default_factory=lambda: {"unreadable_skipped": 0, "empty_defect_masks": 0})

    def summary(self) -> str:
        defects = sorted({s.defect for s in self.test if s.label})
        return (f"{self.layout}/{self.category}: train {len(self.train)} normal, test {sum(not s.label for s in self.test)} "
                f"normal + {sum(s.label for s in self.test)} defective ({', '.join(defects) or 'none'}); "
                + ", ".join(f"{k} {v}" for k, v in self.counts.items()))


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


class IndexBuilder:
    """Adds samples to an :class:`AnomalyIndex`, checking each file (and counting skips with ``skip_bad``)."""

    def __init__(self, index: AnomalyIndex, skip_bad: bool) -> None:
        self.index, self.skip_bad = index, skip_bad

    def _size(self, path: Path) -> tuple[int, int] | None:
        try:
            return probe_size(path)
        except BadImageError:
            if not self.skip_bad:
                raise
            self.index.counts["unreadable_skipped"] += 1
            return None

    def add(self, image: Path, split: str, defect: str, normal: bool, mask: Path | None = None) -> None:
        size = self._size(image)
        if size is None:
            return
        if not normal:
            if mask is None or not mask.is_file():
                raise DataError(f"{image}: defective test image without its mask (expected {mask}); add the mask "
                                "or move the image out of the test split")
            mask_size = self._size(mask)
            if mask_size is None:
                return
            if mask_size != size:
                raise DataError(f"{mask}: mask is {mask_size[1]}x{mask_size[0]} but its image {image.name} is "
                                f"{size[1]}x{size[0]}; masks must have the image's size")
            if not read_mask(mask).any():
                self.index.counts["empty_defect_masks"] += 1
        sample = AnomalySample(image, split, defect, 0 if normal else 1, None if normal else mask)
        (self.index.train if split == "train" else self.index.test).append(sample)

    def finish(self) -> AnomalyIndex:
        if not self.index.train:
            raise DataError(f"{self.index.root}: no training images for category {self.index.category!r}")
        if not self.index.test:
            raise DataError(f"{self.index.root}: no test images for category {self.index.category!r}")
        return self.index


def list_categories(root: str | Path, normal: str) -> list[str]:
    """The category folders under ``root`` (those with ``train/<normal>``)."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / "train" / normal).is_dir()) if root.is_dir() else []


def index_category_folders(root: str | Path, category: str, *, layout: str, normal: str,
                           mask_for: Callable[[Path, str, Path], Path], skip_bad: bool = False) -> AnomalyIndex:
    """``<root>/<category>/train/<normal>/*`` and ``test/<defect>/*`` (``<normal>`` = defect-free); the mask of
    a defective image is ``mask_for(category_dir, defect, image)``."""
    root = Path(root).expanduser()
    category_dir = root / category
    if not category_dir.is_dir():
        known = list_categories(root, normal)
        raise DataError(f"{category_dir}: no such category folder; {layout} categories under {root}: "
                        f"{', '.join(known) or 'none (is data.root the dataset folder?)'}")
    train_dir = category_dir / "train" / normal
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: missing; {layout} keeps the defect-free training images in train/{normal}")
    builder = IndexBuilder(AnomalyIndex(layout, category, root), skip_bad)
    for image in list_images(train_dir):
        builder.add(image, "train", normal, normal=True)
    test_dir = category_dir / "test"
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []:
        is_normal = defect_dir.name == normal
        for image in list_images(defect_dir):
            mask = None if is_normal else mask_for(category_dir, defect_dir.name, image)
            builder.add(image, "test", defect_dir.name, is_normal, mask)
    return builder.finish()
