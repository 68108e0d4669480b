"""SynthPipes on disk: generate a dataset atomically (YOLO-with-masks layout + meta.jsonl) and keep it in the content-keyed cache."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from fgkd import paths
from fgkd.data.synth.synthpipes.render import render_sample, yolo_lines
from fgkd.data.synth.synthpipes.settings import CLASS_NAMES, META_NAME, SynthPipesSettings
from fgkd.io import COMPLETE_MARKER, atomic_write, file_lock, publish_dir, remove_stale, tmp_sibling


# --------------------------------------------------------------------------------------------- writing
def split_of(settings: SynthPipesSettings) -> list[str]:
    """'train' / 'val' / 'test' per image index: val is a seeded permutation's head (both train and val non-empty
    when N >= 2), test a seeded draw from the rest (``test_fraction`` of N; none at 0, the same val as before)."""
    n = settings.num_images
    n_val = int(round(n * settings.val_fraction))
    if settings.val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    val = set(np.random.default_rng([settings.seed, 0]).permutation(n)[:n_val].tolist())
    rest = [i for i in range(n) if i not in val]
    n_test = min(int(round(n * settings.test_fraction)), max(len(rest) - 1, 0)) if settings.test_fraction > 0 else 0
    test = set(np.random.default_rng([settings.seed, 1]).permutation(rest)[:n_test].tolist()) if n_test else set()
    return ["val" if i in val else "test" if i in test else "train" for i in range(n)]


def _write_one(job: tuple[int, str, str, SynthPipesSettings]) -> dict:
    index, split, root, settings = job
    sample = render_sample(index, settings)
    stem = f"{index:06d}"
    base = Path(root)
    image_path = base / "images" / split / f"{stem}.jpg"
    ok = cv2.imwrite(str(image_path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
    ok &= cv2.imwrite(str(base / "masks" / split / f"{stem}.png"), sample.mask)
    if not ok:
        raise OSError(f"OpenCV could not write {image_path} (is the disk full or the folder read-only?)")
    lines = yolo_lines(sample.boxes, sample.classes, sample.meta["width"], sample.meta["height"])
    (base / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    return {"stem": stem, "split": split, **sample.meta}


def _data_yaml(settings: SynthPipesSettings) -> dict:
    splits = {"train": "images/train", "val": "images/val", **({"test": "images/test"} if settings.test_fraction else {})}
    return {"names": list(CLASS_NAMES), "nc": len(CLASS_NAMES), **splits, "generator": settings.as_dict()}


def _is_complete(root: Path, settings: SynthPipesSettings) -> bool:
    marker = root / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("generator") == settings.as_dict()
    except (OSError, ValueError):
        return False


def generate(out_dir: str | os.PathLike, num_images: int, seed: int, max_side: int = 640,
             val_fraction: float = 0.2, *, overwrite: bool = False, workers: int = 0, progress: bool = True,
             **settings) -> Path:
    """Write a SynthPipes dataset to ``out_dir`` (atomically) and return its path.

    ``settings`` are the other SynthPipesSettings fields (full_size, empty_fraction, ...). The files go to
    a temporary sibling first and are published onto ``out_dir`` at the end (:func:`fgkd.io.publish_dir`:
    the marker last, then the rename); an existing non-empty ``out_dir`` is an error unless ``overwrite``.
    ``workers`` > 0 renders in that many processes (same bytes as serial).
    """
    config = SynthPipesSettings.from_kwargs(num_images=num_images, seed=seed, max_side=max_side,
                                            val_fraction=val_fraction, **settings)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; choose another --out or pass "
                              f"overwrite=True (--overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(out)
    try:
        for kind in ("images", "labels", "masks"):
            for split in ("train", "val", *(("test",) if config.test_fraction else ())):
                (tmp / kind / split).mkdir(parents=True, exist_ok=True)
        splits = split_of(config)
        jobs = [(i, splits[i], str(tmp), config) for i in range(config.num_images)]
        metas: list[dict] = []
        with tqdm(total=len(jobs), desc=f"SynthPipes -> {out.name}", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            if workers and workers > 0:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    for meta in pool.map(_write_one, jobs, chunksize=4):
                        metas.append(meta)
                        bar.update()
            else:
                for job in jobs:
                    metas.append(_write_one(job))
                    bar.update()
        atomic_write(tmp / META_NAME, "".join(json.dumps(meta, sort_keys=True) + "\n" for meta in metas))
        atomic_write(tmp / "data.yaml", yaml.safe_dump(_data_yaml(config), sort_keys=False))
        marker = {"generator": config.as_dict(), "key": config.key(), "images": len(metas),
                  "damaged_images": sum(1 for m in metas if m["damages"])}
        if _is_complete(out, config):  # the same dataset appeared meanwhile: first complete one wins
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        publish_dir(tmp, out, marker_text=json.dumps(marker, sort_keys=True, indent=1),
                    keep_existing=lambda existing: _is_complete(existing, config))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_cache_root() -> Path:
    """$FGKD_CACHE, else <outputs>/cache under the working directory (:func:`fgkd.paths.cache_root`)."""
    return paths.cache_root()


def dataset_dir(cache_root: str | os.PathLike | None = None, **settings) -> Path:
    """Where ensure_dataset keeps the dataset for these settings (it may not exist yet)."""
    config = SynthPipesSettings.from_kwargs(**settings)
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return root.absolute() / f"synthpipes-{config.key()}"


def ensure_dataset(cache_root: str | os.PathLike | None = None, *, workers: int = 0, progress: bool = True,
                   **settings) -> Path:
    """Return the cached dataset for ``settings``, generating it once (atomic, process-safe)."""
    config = SynthPipesSettings.from_kwargs(**settings)
    final = dataset_dir(cache_root, **settings)
    if _is_complete(final, config):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock") as locked:
        if _is_complete(final, config):  # another process generated it while we waited
            return final
        if locked:  # with the lock held, temp folders of this key belong to crashed runs
            remove_stale(final)
        fields = dataclasses.asdict(config)
        return generate(final, overwrite=True, workers=workers, progress=progress, **fields)


def load_meta(root: str | os.PathLike) -> list[dict]:
    """The per-image records of ``meta.jsonl`` (sizes, pipes, damage and distractor boxes in px)."""
    path = Path(root) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a SynthPipes dataset (python -m fgkd.data.synth.synthpipes)?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
