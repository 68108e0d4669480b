"""Decode-once cache of resized images and masks.

Multi-megapixel sources are decoded, oriented, converted to RGB uint8 and resized to the training size
(long side = imgsz) once; later epochs and runs read a small ``.npz`` instead. An entry's key is a hash of
the source path, its mtime and size, the target size, the mask source (file stat or segmentation hash)
and the mask threshold, so editing a file or changing imgsz makes a new entry. Entries are written to a
temporary file in the same folder and published with ``os.replace`` (atomic on POSIX), so concurrent
builders (DDP ranks, workers) and crashes never leave a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fgkd.data import imageio
from fgkd.data.augment import resize_long_side
from fgkd.data.formats import SampleRecord, SegmentMask
from fgkd.data.imageio import BadImageError
from fgkd.data.synth.synthpipes import (
    default_cache_root,  # one definition of the cache root, shared with the generator
)
from fgkd.io import atomic_save

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the stored content or the resize method changes (2: mask_soft stored)




@dataclass
class LoadedImage:
    """A decoded sample at training resolution (before letterbox/augmentation)."""

    image: np.ndarray  # RGB uint8 [h, w, 3], max(h, w) == imgsz
    mask: np.ndarray  # bool [h, w]
    orig_shape: tuple[int, int]  # (h, w) of the decoded source image
    mask_resized: bool  # the source mask had a different size than the image
    mask_soft: float = 0.0  # fraction of source mask pixels neither background nor foreground value


def load_mask(record: SampleRecord, shape: tuple[int, int], threshold: float | str
              ) -> tuple[np.ndarray, bool, float]:
    """The record's mask at ``shape`` (h, w), whether it was nearest-resized (its source differs), and the
    fraction of its source pixels that are neither background nor foreground (``read_mask_checked``)."""
    height, width = shape
    soft = 0.0
    if isinstance(record.mask, Path):
        mask, soft = imageio.read_mask_checked(record.mask, threshold)
    elif isinstance(record.mask, SegmentMask):
        mask = record.mask.rasterize()
    elif record.mask == "full":
        return np.ones(shape, bool), False, 0.0
    elif record.mask == "empty":
        return np.zeros(shape, bool), False, 0.0
    else:  # pragma: no cover - formats only produce the above
        raise ValueError(f"{record.image}: unknown mask source {record.mask!r}")
    resized = mask.shape != (height, width)
    return imageio.resize_mask_nearest(mask, height, width), resized, soft


def load_source(record: SampleRecord, imgsz: int, mask_threshold: float | str = "auto") -> LoadedImage:
    """Decode the source image and mask and resize both to long side ``imgsz`` (mask: nearest)."""
    reduction = imageio.jpeg_reduction(record.size, imgsz)
    image = imageio.read_image(record.image, reduction=reduction)
    orig_shape = (int(image.shape[0]), int(image.shape[1]))
    if reduction > 1 and orig_shape != tuple(record.size):
        orig_shape = tuple(record.size)  # decoded at 1/reduction: the header has the true size
    mask, mask_resized, soft = load_mask(record, orig_shape, mask_threshold)
    image = resize_long_side(image, imgsz)
    mask = imageio.resize_mask_nearest(mask, image.shape[0], image.shape[1])
    return LoadedImage(np.ascontiguousarray(image), mask, orig_shape, mask_resized, soft)


def cache_key(record: SampleRecord, imgsz: int, mask_threshold: float | str = "auto") -> str:
    """Hash of (source path, mtime, size, target size, mask source, threshold, cache version)."""
    try:
        stat = record.image.stat()
    except OSError as error:
        raise BadImageError(record.image, f"cannot stat ({error.strerror or error})") from error
    payload = "|".join(
        [
            f"v{CACHE_VERSION}",
            str(record.image.resolve()),
            str(stat.st_mtime_ns),
            str(stat.st_size),
            str(int(imgsz)),
            record.mask_key(),
            str(mask_threshold) if mask_threshold == "auto" else repr(float(mask_threshold)),
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


class ResizedImageCache:
    """Get-or-build access to resized samples; ``enabled=False`` decodes every time (no disk use)."""

    def __init__(
        self, directory: str | os.PathLike | None, imgsz: int, mask_threshold: float | str = "auto", enabled: bool = True
    ):
        self.enabled = bool(enabled)
        self.directory = Path(directory).expanduser() if directory else default_cache_root() / "resized"
        self.imgsz = int(imgsz)
        self.mask_threshold = mask_threshold if mask_threshold == "auto" else float(mask_threshold)

    def path_for(self, record: SampleRecord) -> Path:
        key = cache_key(record, self.imgsz, self.mask_threshold)
        return self.directory / key[:2] / f"{key}.npz"

    def contains(self, record: SampleRecord) -> bool:
        return self.enabled and self.path_for(record).is_file()

    def _read(self, path: Path) -> LoadedImage | None:
        try:
            with np.load(path, allow_pickle=False) as stored:
                return LoadedImage(
                    stored["image"],
                    stored["mask"].astype(bool),
                    (int(stored["orig_shape"][0]), int(stored["orig_shape"][1])),
                    bool(stored["mask_resized"]),
                    float(stored["mask_soft"]) if "mask_soft" in stored else 0.0,
                )
        except (OSError, ValueError, KeyError, EOFError) as error:
            # Not produced by our atomic writes, but a disk can still be damaged: rebuild the entry.
            log.warning("resized-image cache entry %s unreadable (%s); rebuilding it", path, error)
            return None

    def _write(self, path: Path, loaded: LoadedImage) -> None:
        atomic_save(path, lambda handle: np.savez(
            handle,
            image=loaded.image,
            mask=loaded.mask,
            orig_shape=np.asarray(loaded.orig_shape, np.int64),
            mask_resized=np.asarray(loaded.mask_resized),
            mask_soft=np.asarray(loaded.mask_soft, np.float32),
        ))

    def mask_info(self, record: SampleRecord) -> tuple[float, bool]:
        """``(mask_soft, mask has foreground)`` of a record, reading only the mask arrays of a cached entry."""
        path = self.path_for(record)
        if self.enabled and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as stored:
                    soft = float(stored["mask_soft"]) if "mask_soft" in stored else 0.0
                    return soft, bool(stored["mask"].any())
            except (OSError, ValueError, KeyError, EOFError):
                pass
        loaded = self.load(record)
        return loaded.mask_soft, bool(loaded.mask.any())

    def load(self, record: SampleRecord) -> LoadedImage:
        """The resized sample, from the cache when present, else decoded (and stored when enabled)."""
        if not self.enabled:
            return load_source(record, self.imgsz, self.mask_threshold)
        path = self.path_for(record)
        if path.is_file():
            loaded = self._read(path)
            if loaded is not None:
                return loaded
        loaded = load_source(record, self.imgsz, self.mask_threshold)
        try:
            self._write(path, loaded)
        except OSError as error:  # a read-only or full cache disk must not stop training
            log.warning("cannot write resized-image cache entry %s: %s", path, error)
        return loaded

    def build(
        self,
        records: Sequence[SampleRecord],
        description: str = "caching images",
        threads: int | None = None,
        progress: bool = True,
    ) -> list[tuple[int, BadImageError]]:
        """Decode and store every record not yet cached (OpenCV releases the GIL, so threads help).
        Returns the (position, error) of records that failed to decode; the caller applies skip_bad."""
        if not self.enabled:
            return []
        todo = [position for position, record in enumerate(records) if not self.path_for(record).is_file()]
        if not todo:
            return []
        failures: list[tuple[int, BadImageError]] = []
        workers = max(1, int(threads or min(8, os.cpu_count() or 1)))
        bar = tqdm(total=len(todo), desc=description, unit="img", disable=not progress, dynamic_ncols=True)
        with bar, ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(self.load, records[position]): position for position in todo}
            for future in as_completed(futures):
                try:
                    future.result()
                except BadImageError as error:
                    failures.append((futures[future], error))
                bar.update(1)
        return sorted(failures, key=lambda item: item[0])
