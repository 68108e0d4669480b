"""SynthTex on disk: the MVTec AD layout, written atomically and kept in the content-keyed cache.

``<root>/<category>/train/good/*.png``, ``test/good/*.png``, ``test/<defect>/*.png`` and
``ground_truth/<defect>/<stem>_mask.png`` (0/255), read back by the MVTec loader like real data.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
from tqdm import tqdm

from fgkd import io, paths
from fgkd.data.synth.generated import ensure_generated
from fgkd.data.synth.synthtex.render import (
    CATEGORIES,
    DEFECTS,
    apply_defect,
    render_normal,
    rng_for,
    to_uint8,
)

GENERATOR_VERSION = "1.0"  # bump on ANY change to the drawn pixels or the layout: it keys every cache


@dataclasses.dataclass(frozen=True)
class SynthTexSettings:
    """Every setting that shapes the files (all enter the cache key)."""

    categories: tuple[str, ...] = CATEGORIES
    size: int = 128
    num_train: int = 40
    num_test_good: int = 12
    num_test_per_defect: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown or not self.categories:
            raise ValueError(f"synthtex.categories: unknown {unknown or '(empty)'}; choose from {', '.join(CATEGORIES)}")
        for key in ("size", "num_train", "num_test_good", "num_test_per_defect", "seed"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (32 if key == "size" else 0):
                raise ValueError(f"synthtex.{key}={value!r}: must be an integer >= {32 if key == 'size' else 0}")
        if self.num_train < 1 or self.num_test_per_defect < 1:
            raise ValueError("synthtex.num_train and synthtex.num_test_per_defect must be >= 1")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "categories": list(self.categories), "version": GENERATOR_VERSION}

    def key(self) -> str:
        return io.content_key(self.as_dict())[:12]


def _write_png(path: Path, image) -> None:
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), array):
        raise OSError(f"OpenCV could not write {path} (is the disk full or the folder read-only?)")


def write_category(root: Path, category: str, settings: SynthTexSettings) -> dict[str, int]:
    base = root / category
    counts = {"train": 0, "test_good": 0, "test_defective": 0}
    jobs = [("train", "good", i) for i in range(settings.num_train)]
    jobs += [("test", "good", i) for i in range(settings.num_test_good)]
    jobs += [("test", d, i) for d in DEFECTS[category] for i in range(settings.num_test_per_defect)]
    for split, defect, i in jobs:
        rng = rng_for(settings.seed, category, split, defect, i)
        image, fg = render_normal(category, rng, settings.size)
        folder = base / split / defect
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{i:03d}"
        if defect != "good":
            image, mask = apply_defect(category, defect, image, fg, rng)
            (base / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            _write_png(base / "ground_truth" / defect / f"{stem}_mask.png", mask)
            counts["test_defective"] += 1
        else:
            counts["train" if split == "train" else "test_good"] += 1
        _write_png(folder / f"{stem}.png", to_uint8(image))
    return counts


def dataset_dir(cache_root: str | os.PathLike | None = None, **settings) -> Path:
    config = SynthTexSettings(**settings)
    root = Path(cache_root).expanduser() if cache_root is not None else paths.cache_root()
    return root.absolute() / f"synthtex-{config.key()}"


def ensure_dataset(cache_root: str | os.PathLike | None = None, *, progress: bool = True, **settings) -> Path:
    """The cached SynthTex dataset for ``settings``, generated once (atomic, process-safe)."""
    config = SynthTexSettings(**settings)
    final = dataset_dir(cache_root, **settings)

    def write(tmp: Path) -> dict[str, dict[str, int]]:
        return {category: write_category(tmp, category, config)
                for category in tqdm(config.categories, desc=f"SynthTex -> {final.name}", unit="category",
                                     disable=not progress)}

    return ensure_generated(final, config.as_dict(), write)
