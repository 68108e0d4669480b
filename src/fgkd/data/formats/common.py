"""What every dataset format produces: :class:`SampleRecord` lists per split, masks, box sanitising, errors.

Indexing reads labels and image/mask *headers* only (no pixel decoding); it validates the input
(truncated images, unknown class ids, malformed lines, missing masks) and counts what it fixed
(clipped boxes, dropped degenerate boxes, masks that need resizing) in :class:`SplitStats`.

Boxes are stored normalised ``xyxy`` in ``[0, 1]`` of the (EXIF-oriented) original image, so they do
not depend on the size the loader later resizes to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from fgkd.data import imageio
from fgkd.data.imageio import BadImageError
from fgkd.data.report import SplitStats

MissingMaskPolicy = Literal["error", "full", "empty"]
MISSING_MASK_POLICIES = ("error", "full", "empty")
# Normalised coordinates beyond this look like pixel labels (a common export mistake), not clipping.
_MAX_NORMALIZED = 2.0
_CLIP_EPS = 1e-6
_MAX_LISTED = 20


class DataError(ValueError):
    """Bad dataset input (labels, layout, config); the message names the file/key and the fix."""


@dataclass(frozen=True)
class SegmentMask:
    """A mask given as COCO segmentations (polygons and/or RLE) of one category, rasterised on load."""

    height: int
    width: int
    polygons: tuple[tuple[float, ...], ...] = ()
    rles: tuple[Any, ...] = ()
    source: str = ""

    def key(self) -> str:
        payload = json.dumps([self.height, self.width, self.polygons, [_jsonable(r) for r in self.rles]])
        return hashlib.sha1(payload.encode()).hexdigest()

    def rasterize(self) -> np.ndarray:
        """Union of all polygons and RLEs -> bool [height, width]. Polygons go through the COCO mask
        utilities (faster-coco-eval, pixel-exact COCO semantics: a pixel is in when its centre is) when
        installed, else cv2.fillPoly (which also fills pixels the outline touches: up to 1 px more)."""
        canvas = np.zeros((self.height, self.width), np.uint8)
        mask_utils = _mask_utils()
        if self.polygons and mask_utils is not None:
            rles = mask_utils.frPyObjects([list(p) for p in self.polygons], self.height, self.width)
            decoded = np.asarray(mask_utils.decode(rles))
            canvas |= (decoded.max(axis=2) if decoded.ndim == 3 else decoded).astype(np.uint8)
        elif self.polygons:
            # vertices are continuous coordinates; fillPoly works on pixel-centre indices (hence -0.5)
            points = [
                np.round((np.asarray(poly, np.float64).reshape(-1, 2) - 0.5) * 16).astype(np.int32)
                for poly in self.polygons
            ]
            cv2.fillPoly(canvas, points, 1, shift=4)
        for rle in self.rles:
            canvas |= _decode_rle(rle, self.height, self.width, self.source)
        return canvas.astype(bool)


MaskSource = Path | SegmentMask | Literal["full", "empty"]


@dataclass
class SampleRecord:
    """One image: where it is, its boxes (normalised xyxy) and where its mask comes from."""

    image: Path
    classes: np.ndarray  # int64 [N]
    boxes: np.ndarray  # float32 [N, 4] normalised x1 y1 x2 y2 in [0, 1]
    mask: MaskSource
    size: tuple[int, int]  # (h, w) from the header, EXIF-oriented

    def mask_key(self) -> str:
        """Identifies the mask content for the resized-image cache key."""
        if isinstance(self.mask, Path):
            stat = self.mask.stat()
            return f"file:{self.mask.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
        if isinstance(self.mask, SegmentMask):
            return f"segments:{self.mask.key()}"
        return f"fill:{self.mask}"


@dataclass
class DatasetIndex:
    """Records and counters per split, plus the class names (index = class id)."""

    class_names: list[str]
    splits: dict[str, list[SampleRecord]] = field(default_factory=dict)
    stats: dict[str, SplitStats] = field(default_factory=dict)
    root: Path | None = None
    format: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------------------------
# shared helpers


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _mask_utils() -> Any:
    """COCO mask utilities (faster-coco-eval, else pycocotools), or None."""
    try:
        from faster_coco_eval.core import mask as mask_utils
    except ImportError:  # pragma: no cover - faster-coco-eval is a pinned requirement
        try:
            from pycocotools import mask as mask_utils  # type: ignore[no-redef]
        except ImportError:
            return None
    return mask_utils


def _decode_rle(rle: Any, height: int, width: int, source: str) -> np.ndarray:
    mask_utils = _mask_utils()
    if mask_utils is None:
        raise DataError(
            f"{source}: RLE segmentation found but neither faster-coco-eval nor pycocotools is installed. "
            "Fix: pip install faster-coco-eval, or export the mask category as polygons."
        )
    rle = dict(rle)
    if isinstance(rle.get("counts"), list):  # uncompressed RLE -> compressed first
        rle = mask_utils.frPyObjects(rle, height, width)
    decoded = np.asarray(mask_utils.decode(rle))
    if decoded.ndim == 3:
        decoded = decoded.max(axis=2)
    if decoded.shape != (height, width):
        raise DataError(f"{source}: RLE size {decoded.shape} differs from the image size {(height, width)}")
    return (decoded > 0).astype(np.uint8)


def sanitize_boxes(
    boxes: np.ndarray, classes: np.ndarray, size: tuple[int, int], min_box_size: float, stats: SplitStats
) -> tuple[np.ndarray, np.ndarray]:
    """Drop exact duplicates (same class and box, e.g. a repeated label line; counted), clip normalised xyxy
    boxes to the image (counted) and drop those under ``min_box_size`` pixels wide or high after clipping
    (counted). Returns (boxes float32 [N,4], classes int64 [N])."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    rows = np.concatenate([np.asarray(classes, np.float64)[:, None], np.asarray(boxes, np.float64)], 1)
    _, first = np.unique(rows, axis=0, return_index=True)
    if len(first) < len(rows):
        keep_order = np.sort(first)
        stats.duplicates += len(rows) - len(first)
        boxes, classes = np.asarray(boxes)[keep_order], np.asarray(classes)[keep_order]
    height, width = size
    outside = ((boxes < -_CLIP_EPS) | (boxes > 1 + _CLIP_EPS)).any(axis=1)
    clipped = np.clip(boxes, 0.0, 1.0)
    box_w = (clipped[:, 2] - clipped[:, 0]) * width
    box_h = (clipped[:, 3] - clipped[:, 1]) * height
    keep = (box_w >= min_box_size) & (box_h >= min_box_size)
    stats.dropped += int((~keep).sum())
    stats.clipped += int((outside & keep).sum())
    kept_classes = classes[keep].astype(np.int64)
    stats.add_boxes(kept_classes.tolist())
    return clipped[keep].astype(np.float32), kept_classes


def derive_sibling(image: Path, folder: str, suffix: str) -> Path:
    """Contract rule: replace the last ``images`` path component by ``folder`` and the suffix."""
    parts = list(image.parts)
    for position in range(len(parts) - 2, -1, -1):
        if parts[position] == "images":
            parts[position] = folder
            return Path(*parts).with_suffix(suffix)
    raise DataError(
        f"{image}: cannot derive its {folder}/ path: the image path has no 'images' folder. "
        "Fix: use the layout root/images/<split>/<stem>.jpg with root/labels and root/masks beside it."
    )


def _raise_listed(problem: str, files: Sequence[str], fix: str) -> None:
    shown = "\n  ".join(files[:_MAX_LISTED])
    more = f"\n  ... and {len(files) - _MAX_LISTED} more" if len(files) > _MAX_LISTED else ""
    raise DataError(f"{len(files)} {problem}:\n  {shown}{more}\nFix: {fix}")


def _resolve_mask(
    image: Path,
    mask_path: Path | None,
    missing_mask: MissingMaskPolicy,
    stats: SplitStats,
    missing: list[str],
    expected: str = "",
) -> MaskSource | None:
    if mask_path is not None and mask_path.is_file():
        return mask_path
    if missing_mask == "error":
        missing.append(f"{image} (expected {expected or f'mask {mask_path}'})")
        return None
    stats.missing_masks += 1
    return missing_mask


class _SplitBuilder:
    """Accumulates records of one split with the bad-input policies applied."""

    def __init__(self, split: str, skip_bad: bool, missing_mask: MissingMaskPolicy, min_box_size: float):
        if missing_mask not in MISSING_MASK_POLICIES:
            raise DataError(f"data.missing_mask={missing_mask!r}; allowed: {', '.join(MISSING_MASK_POLICIES)}")
        self.split = split
        self.skip_bad = skip_bad
        self.missing_mask: MissingMaskPolicy = missing_mask
        self.min_box_size = min_box_size
        self.stats = SplitStats()
        self.records: list[SampleRecord] = []
        self.bad: list[str] = []
        self.missing_masks: list[str] = []

    def probe(self, image: Path) -> tuple[int, int] | None:
        try:
            return imageio.probe_size(image)
        except BadImageError as error:
            self._bad(error)
            return None

    def _bad(self, error: BadImageError) -> None:
        if self.skip_bad:
            self.stats.skipped += 1
            self.stats.skipped_files.append(error.path)
        else:
            self.bad.append(f"{error.path}: {error.reason}")

    def add(
        self,
        image: Path,
        size: tuple[int, int],
        boxes: np.ndarray,
        classes: np.ndarray,
        mask: MaskSource | None,
    ) -> None:
        """``mask`` is the resolved source (None = missing under policy error, already listed)."""
        if isinstance(mask, Path):
            try:
                if imageio.probe_size(mask) != size:
                    self.stats.resized_masks += 1
            except BadImageError as error:
                self._bad(error)
                return
        elif isinstance(mask, SegmentMask) and (mask.height, mask.width) != size:
            self.stats.resized_masks += 1
        if mask is None:
            return
        boxes, classes = sanitize_boxes(boxes, classes, size, self.min_box_size, self.stats)
        self.stats.images += 1
        self.records.append(SampleRecord(image, classes, boxes, mask, size))

    def finish(self) -> tuple[list[SampleRecord], SplitStats]:
        if self.bad:
            _raise_listed(
                f"unreadable image/mask file(s) in split '{self.split}'",
                self.bad,
                "replace or re-export them, or set data.skip_bad=true to skip them (counted in the report).",
            )
        if self.missing_masks:
            _raise_listed(
                f"image(s) without a foreground mask in split '{self.split}'",
                self.missing_masks,
                "add the mask PNGs (same stem, under masks/), or set data.missing_mask=full (mask = whole "
                "image) or data.missing_mask=empty (no foreground).",
            )
        return self.records, self.stats


