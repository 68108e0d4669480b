"""SynthTiles on disk: the MTD layout, written atomically into the content-keyed cache.

``<root>/MT_<Class>/Imgs/<stem>.jpg`` (8-bit gray JPEG) with ``<stem>.png`` masks (anti-aliased 0..255; all
zero for ``MT_Free``), and ``<root>/mtd_train_filenames.txt`` listing the ``MT_Free`` training images — read
back by the MTD loader with ``split=public`` exactly like the real dataset. The first ``empty_uneven_masks``
``MT_Uneven`` images get an all-zero mask, as 4 of the real 103 have.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fgkd import io, paths
from fgkd.data.synth.generated import ensure_generated
from fgkd.data.synth.synthtiles.render import DEFECTS, NORMAL, apply_defect, render_normal, rng_for, to_uint8

GENERATOR_VERSION = "1.0"  # bump on ANY change to the drawn pixels or the layout: it keys every cache
TRAIN_LIST = "mtd_train_filenames.txt"
_JPEG_QUALITY = 92


@dataclasses.dataclass(frozen=True)
class SynthTilesSettings:
    """Every setting that shapes the files (all enter the cache key)."""

    height: int = 128
    aspect: tuple[float, float] = (0.45, 2.2)
    num_train: int = 60
    num_test_free: int = 16
    num_test_per_defect: int = 6
    empty_uneven_masks: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "aspect", tuple(float(a) for a in self.aspect))
        if len(self.aspect) != 2 or not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"synthtiles.aspect={list(self.aspect)}: two ratios 0 < low <= high")
        for key in ("height", "num_train", "num_test_free", "num_test_per_defect", "empty_uneven_masks", "seed"):
            value = getattr(self, key)
            low = 32 if key == "height" else (1 if key in ("num_train", "num_test_per_defect") else 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"synthtiles.{key}={value!r}: must be an integer >= {low}")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "aspect": list(self.aspect), "version": GENERATOR_VERSION}

    def key(self) -> str:
        return io.content_key(self.as_dict())[:12]


def stem(settings: SynthTilesSettings, cls: str, index: int) -> str:
    """MTD-like, unique across classes: ``exp<seed>_num_<class index><index>``."""
    return f"exp{settings.seed}_num_{([NORMAL, *DEFECTS].index(cls) + 1)}{index:04d}"


def _write(path: Path, array: np.ndarray, params: list[int] | None = None) -> None:
    if not cv2.imwrite(str(path), array, params or []):
        raise OSError(f"OpenCV could not write {path} (is the disk full or the folder read-only?)")


def write_dataset(root: Path, settings: SynthTilesSettings, progress: bool = True, name: str = "") -> dict[str, int]:
    jobs = [(NORMAL, i) for i in range(settings.num_train + settings.num_test_free)]
    jobs += [(cls, i) for cls in DEFECTS for i in range(settings.num_test_per_defect)]
    counts = {cls: 0 for cls in (NORMAL, *DEFECTS)}
    counts["empty_masks"] = 0
    train_names = []
    for cls, i in tqdm(jobs, desc=f"SynthTiles -> {name or root.name}", unit="image", disable=not progress):
        rng = rng_for(settings.seed, cls, i)
        image, angle, surface = render_normal(rng, settings.height, settings.aspect)
        mask = np.zeros(image.shape, np.uint8)
        if cls != NORMAL:
            image, mask = apply_defect(cls, image, angle, surface, rng)
            if cls == "MT_Uneven" and i < settings.empty_uneven_masks:
                mask = np.zeros_like(mask)
        if cls != NORMAL and not mask.any():
            counts["empty_masks"] += 1
        folder = root / cls / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        name = stem(settings, cls, i)
        _write(folder / f"{name}.jpg", to_uint8(image), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        _write(folder / f"{name}.png", mask)
        counts[cls] += 1
        if cls == NORMAL and i < settings.num_train:
            train_names.append(f"{name}.jpg")
    (root / TRAIN_LIST).write_text("\n".join(train_names) + "\n")
    return counts


def dataset_dir(cache_root: str | os.PathLike | None = None, **settings) -> Path:
    config = SynthTilesSettings(**settings)
    root = Path(cache_root).expanduser() if cache_root is not None else paths.cache_root()
    return root.absolute() / f"synthtiles-{config.key()}"


def ensure_dataset(cache_root: str | os.PathLike | None = None, *, progress: bool = True, **settings) -> Path:
    """The cached SynthTiles dataset for ``settings``, generated once (atomic, process-safe)."""
    config = SynthTilesSettings(**settings)
    final = dataset_dir(cache_root, **settings)
    return ensure_generated(final, config.as_dict(), lambda tmp: write_dataset(tmp, config, progress, final.name))
