"""The magnetic-tile defect dataset (MTD, Huang et al. 2018) layout and its public train/test split.

``<root>/MT_{Blowhole,Break,Crack,Fray,Free,Uneven}/Imgs/<stem>.jpg`` with a same-stem ``<stem>.png`` mask
beside each image (anomaly.md §3.3, anomaly_spec.md §3.2). Images are the non-PNG files (8-bit gray JPEGs; the
loader replicates them to 3 channels); masks are anti-aliased 0..255 PNGs (``> 127`` with the default
``mask_threshold: auto``). Labels come from the folder: ``MT_Free`` is normal, every other class defective —
the 4 all-zero ``MT_Uneven`` masks stay defective (counted as ``empty_defect_masks``), never silently normal.

Splits (``data.split``):

* ``public`` (default): the 761 ``MT_Free`` names of DifferNet's ``mtd_train_filenames.txt`` (carried in this
  package, sha256 ``ddf6ddb1…``; used by DifferNet, PatchCore, AnomalyNCD) are the training set; the test
  set is the other 191 ``MT_Free`` images + all 392 defective (583). ``data.train_list=FILE`` replaces the
  list (the SynthTiles generator writes its own); every listed name must exist in ``MT_Free/Imgs``.
* ``seeded``: a seeded random ``train_fraction`` of ``MT_Free`` (``data.seed``) trains, the rest tests.

MTD has no product categories: the one category is ``mtd``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from fgkd.data.formats.anomaly_index import AnomalyIndex, IndexBuilder
from fgkd.data.formats.common import DataError
from fgkd.data.imageio import IMAGE_SUFFIXES

CATEGORY = "mtd"
NORMAL = "MT_Free"
DEFECT_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
SPLITS = ("public", "seeded")
PUBLIC_TRAIN_LIST = Path(__file__).with_name("mtd_train_filenames.txt")
PUBLIC_TRAIN_SHA256 = "ddf6ddb1b4a123d9506a4d25e870ad32e2b845386c55201fca8307fdc7e62652"


def read_names(path: str | os.PathLike[str]) -> list[str]:
    """Image file names, one per line (blank lines and surrounding whitespace ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.train_list={path}: no such file (one MT_Free image name per line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def list_class_images(root: Path, cls: str) -> list[Path]:
    folder = root / cls / "Imgs"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and p.suffix.lower() != ".png" and not p.name.startswith("."))


def is_mtd_root(root: str | os.PathLike[str]) -> bool:
    return (Path(root).expanduser() / NORMAL / "Imgs").is_dir()


def split_free(free: list[Path], split: str, train_list: str | os.PathLike[str] | None, train_fraction: float,
               seed: int, root: Path) -> tuple[list[Path], list[Path]]:
    """``(train, test)`` MT_Free images of a split (module docstring)."""
    if split == "seeded":
        if not 0.0 < float(train_fraction) < 1.0:
            raise DataError(f"data.train_fraction={train_fraction}: must be between 0 and 1")
        order = list(free)
        random.Random(int(seed)).shuffle(order)
        n_train = int(round(len(order) * float(train_fraction)))
        train = set(order[:n_train])
        return [p for p in free if p in train], [p for p in free if p not in train]
    if split != "public":
        raise DataError(f"data.split={split!r}: choose one of {', '.join(SPLITS)}")
    list_path = Path(train_list).expanduser() if train_list else PUBLIC_TRAIN_LIST
    names = read_names(list_path)
    by_name = {p.name: p for p in free}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"{root / NORMAL / 'Imgs'}: {len(missing)} of the {len(names)} training names in {list_path} "
                        f"are not there (e.g. {missing[:3]}); is data.root the MTD folder? For another copy or a "
                        "subset use data.split=seeded, or give its own list with data.train_list=FILE")
    train = set(names)
    return [by_name[n] for n in sorted(train)], [p for p in free if p.name not in train]


def index_mtd(root: str | os.PathLike[str], category: str = CATEGORY, *, split: str = "public",
              train_list: str | os.PathLike[str] | None = None, train_fraction: float = 0.8, seed: int = 0,
              skip_bad: bool = False) -> AnomalyIndex:
    """The train (MT_Free) and test samples of MTD under ``root``."""
    root = Path(root).expanduser()
    if category != CATEGORY:
        raise DataError(f"data.category={category!r}: MTD has one category, {CATEGORY!r}")
    if not is_mtd_root(root):
        raise DataError(f"{root}: no {NORMAL}/Imgs folder; data.root must be the MTD folder holding "
                        f"{NORMAL}/ and {', '.join(DEFECT_CLASSES)}/ (each with Imgs/<stem>.jpg and <stem>.png masks)")
    present = [c for c in DEFECT_CLASSES if list_class_images(root, c)]
    if not present:
        raise DataError(f"{root}: no defective images (none of {', '.join(DEFECT_CLASSES)}/Imgs holds images)")
    train, test_free = split_free(list_class_images(root, NORMAL), split, train_list, train_fraction, seed, root)
    builder = IndexBuilder(AnomalyIndex("mtd", CATEGORY, root), skip_bad)
    for image in train:
        builder.add(image, "train", NORMAL, normal=True)
    for image in test_free:
        builder.add(image, "test", NORMAL, normal=True)
    for cls in present:
        for image in list_class_images(root, cls):
            builder.add(image, "test", cls, normal=False, mask=image.with_suffix(".png"))
    return builder.finish()
