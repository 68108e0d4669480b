"""Dataset indexing: YOLO-with-masks and COCO layouts -> one list of :class:`SampleRecord` per split.

Indexing reads labels and image/mask *headers* only (no pixel decoding); it validates the input
(truncated images, unknown class ids, malformed lines, missing masks) and counts what it fixed
(clipped boxes, dropped degenerate boxes, masks that need resizing) in :class:`SplitStats`.

Boxes are stored normalised ``xyxy`` in ``[0, 1]`` of the (EXIF-oriented) original image, so they do
not depend on the size the loader later resizes to.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import yaml

from fgkd.data import imageio
from fgkd.data.imageio import IMAGE_SUFFIXES, BadImageError
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
    """Clip normalised xyxy boxes to the image (counted) and drop those under ``min_box_size`` pixels
    wide or high after clipping (counted). Returns (boxes float32 [N,4], classes int64 [N])."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
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


# ----------------------------------------------------------------------------------------------
# YOLO layout


def read_data_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a mapping with names/nc/train/val keys")
    return content


def parse_names(names: Any, source: str, nc: int | None = None) -> list[str]:
    """``names`` as a list or a {id: name} mapping with ids 0..nc-1."""
    if isinstance(names, Mapping):
        ids = sorted(int(key) for key in names)
        if ids != list(range(len(ids))):
            raise DataError(f"{source}: names ids must be 0..{len(ids) - 1}, got {ids}")
        result = [str(names[key]) for key in sorted(names, key=int)]
    elif isinstance(names, Sequence) and not isinstance(names, str):
        result = [str(name) for name in names]
    else:
        raise DataError(f"{source}: 'names' must be a list of class names or an {{id: name}} mapping")
    if not result:
        raise DataError(f"{source}: 'names' is empty")
    if nc is not None and int(nc) != len(result):
        raise DataError(f"{source}: nc={nc} but {len(result)} names are given")
    return result


def list_split_images(root: Path, spec: Any, key: str) -> list[Path]:
    """Images of a split given as a folder, a .txt list file, an image path or a list of those."""
    specs = list(spec) if isinstance(spec, list | tuple) else [spec]
    images: list[Path] = []
    for item in specs:
        path = Path(os.path.expanduser(str(item)))
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            images.extend(
                sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            )
        elif path.suffix.lower() == ".txt" and path.is_file():
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                candidate = Path(os.path.expanduser(entry))
                if not candidate.is_absolute():
                    beside = path.parent / candidate
                    candidate = beside if beside.exists() else root / candidate
                if not candidate.is_file():
                    raise DataError(f"{path}:{lineno}: image {entry!r} not found (relative to {path.parent} or {root})")
                images.append(candidate)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            raise DataError(
                f"{key}: {path} is neither an image folder nor a .txt list of images. "
                "Fix: point it at images/<split> (relative to the dataset root) or a list file."
            )
    return images


def parse_yolo_labels(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read ``cls cx cy w h`` lines -> (classes int64 [N], normalised xyxy float64 [N, 4])."""
    classes: list[int] = []
    boxes: list[list[float]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            raise DataError(
                f"{where}: expected 5 values 'cls cx cy w h' (normalised), got {len(fields)}: {line.strip()!r}"
            )
        try:
            values = [float(value) for value in fields]
        except ValueError as error:
            raise DataError(f"{where}: non-numeric value in {line.strip()!r}") from error
        if not all(math.isfinite(value) for value in values):
            raise DataError(f"{where}: non-finite value in {line.strip()!r}")
        cls_value, cx, cy, w, h = values
        if cls_value != int(cls_value):
            raise DataError(f"{where}: class id {fields[0]!r} is not an integer")
        cls = int(cls_value)
        if not 0 <= cls < num_classes:
            raise DataError(
                f"{where}: unknown class id {cls}; the dataset has {num_classes} classes (ids 0..{num_classes - 1}). "
                "Fix: correct the label or the names list in data.yaml."
            )
        if max(abs(cx), abs(cy), abs(w), abs(h)) > _MAX_NORMALIZED:
            raise DataError(
                f"{where}: values {line.strip()!r} are not normalised to [0, 1] (pixel coordinates?). "
                "Fix: divide cx, w by the image width and cy, h by its height."
            )
        classes.append(cls)
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.asarray(classes, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4)


def index_yolo(
    root: str | os.PathLike,
    data_yaml: str | os.PathLike | None = None,
    splits: Mapping[str, Any] | None = None,
    names: Any = None,
    split_names: Sequence[str] = ("train", "val"),
    skip_bad: bool = False,
    missing_mask: MissingMaskPolicy = "error",
    min_box_size: float = 1.0,
) -> DatasetIndex:
    """Index a YOLO-with-masks dataset (contract layout). ``splits``/``names`` override data.yaml;
    splits listed in ``split_names`` but absent from both are skipped (except train: error)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={root} is not a directory. Fix: set data.root to the dataset folder.")
    yaml_path = Path(data_yaml) if data_yaml else root / "data.yaml"
    if not yaml_path.is_absolute() and data_yaml:
        yaml_path = root / yaml_path
    content: dict[str, Any] = read_data_yaml(yaml_path) if yaml_path.is_file() else {}
    if data_yaml and not yaml_path.is_file():
        raise DataError(f"data.data_yaml={yaml_path} not found")
    base = root
    if content.get("path"):
        base = Path(os.path.expanduser(str(content["path"])))
        base = base if base.is_absolute() else (yaml_path.parent / base)
    if names is not None:
        class_names = parse_names(names, "data.names")
    elif "names" in content:
        class_names = parse_names(content["names"], str(yaml_path), content.get("nc"))
    else:
        raise DataError(f"{yaml_path}: no class names. Fix: write 'names: [...]' in data.yaml or set data.names.")
    split_specs = {name: content[name] for name in split_names if content.get(name)}
    split_specs.update({name: spec for name, spec in (splits or {}).items() if spec})
    if "train" in split_names and "train" not in split_specs:
        raise DataError(f"{yaml_path}: no 'train' split. Fix: add 'train: images/train' or set data.splits.train.")
    index = DatasetIndex(class_names=class_names, root=root, format="yolo")
    for split, spec in split_specs.items():
        builder = _SplitBuilder(split, skip_bad, missing_mask, min_box_size)
        for image in list_split_images(base, spec, f"split '{split}'"):
            size = builder.probe(image)
            if size is None:
                continue
            label_path = derive_sibling(image, "labels", ".txt")
            if label_path.is_file():
                classes, boxes = parse_yolo_labels(label_path, len(class_names))
            else:
                builder.stats.missing_labels += 1
                classes, boxes = np.zeros((0,), np.int64), np.zeros((0, 4))
            mask_file = derive_sibling(image, "masks", ".png")
            mask = _resolve_mask(image, mask_file, missing_mask, builder.stats, builder.missing_masks)
            builder.add(image, size, boxes, classes, mask)
        index.splits[split], index.stats[split] = builder.finish()
    return index


# ----------------------------------------------------------------------------------------------
# COCO layout


def coco_categories(
    content: Mapping[str, Any], source: str, mask_category: str | None
) -> tuple[dict[int, int], list[str], int | None]:
    """Map category ids (sorted) to contiguous 0..nc-1, leaving out the mask category."""
    categories = content.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{source}: no 'categories' list")
    by_id = {int(category["id"]): str(category.get("name", category["id"])) for category in categories}
    mask_id = None
    if mask_category is not None:
        matches = [cid for cid, name in by_id.items() if name == str(mask_category)]
        if not matches:
            raise DataError(
                f"{source}: data.mask_category={mask_category!r} is not a category; "
                f"available: {sorted(by_id.values())}"
            )
        mask_id = matches[0]
    detection_ids = sorted(cid for cid in by_id if cid != mask_id)
    contiguous = {cid: position for position, cid in enumerate(detection_ids)}
    return contiguous, [by_id[cid] for cid in detection_ids], mask_id


def index_coco(
    root: str | os.PathLike,
    annotations: Mapping[str, str | os.PathLike],
    images: Mapping[str, str | os.PathLike | None] | None = None,
    masks: Mapping[str, str | os.PathLike | None] | None = None,
    mask_category: str | None = None,
    skip_bad: bool = False,
    missing_mask: MissingMaskPolicy = "error",
    min_box_size: float = 1.0,
    include_crowd: bool = False,
) -> DatasetIndex:
    """Index COCO instances json files (one per split). Images are looked up as
    ``images[split]/file_name`` (default ``root/images/<split>``), then ``root/file_name``. Masks come
    from ``mask_category``'s segmentations, or from PNGs of the same stem in ``masks[split]``
    (default: the contract rule images/ -> masks/)."""
    root = Path(root).expanduser()
    images = dict(images or {})
    masks = dict(masks or {})
    index: DatasetIndex | None = None
    reference_source = ""
    for split, ann in annotations.items():
        ann_path = Path(ann).expanduser()
        ann_path = ann_path if ann_path.is_absolute() else root / ann_path
        if not ann_path.is_file():
            raise DataError(f"data.ann_{split}={ann_path} not found. Fix: point it at the split's instances json.")
        try:
            content = json.loads(ann_path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{ann_path}: not valid JSON ({error})") from error
        contiguous, names, mask_id = coco_categories(content, str(ann_path), mask_category)
        if index is None:
            index = DatasetIndex(class_names=names, root=root, format="coco")
            reference_source = str(ann_path)
        elif names != index.class_names:
            raise DataError(
                f"{ann_path}: categories {names} differ from {reference_source} {index.class_names}. "
                "Fix: use the same category list in every split's json."
            )
        image_dir = Path(images.get(split) or root / "images" / split)
        image_dir = image_dir if image_dir.is_absolute() else root / image_dir
        mask_dir = masks.get(split)
        mask_dir = None if mask_dir is None else (Path(mask_dir) if Path(mask_dir).is_absolute() else root / mask_dir)

        per_image: dict[int, list[dict[str, Any]]] = {}
        image_ids = {int(entry["id"]) for entry in content.get("images", [])}
        for annotation in content.get("annotations", []):
            image_id = int(annotation.get("image_id", -1))
            if image_id not in image_ids:
                raise DataError(
                    f"{ann_path}: annotation id {annotation.get('id')} refers to unknown image_id {image_id}"
                )
            per_image.setdefault(image_id, []).append(annotation)

        builder = _SplitBuilder(split, skip_bad, missing_mask, min_box_size)
        missing_images: list[str] = []
        for entry in content.get("images", []):
            file_name = str(entry["file_name"])
            image = image_dir / file_name
            if not image.is_file() and (root / file_name).is_file():
                image = root / file_name
            if not image.is_file():
                missing_images.append(str(image))
                continue
            size = builder.probe(image)
            if size is None:
                continue
            json_size = (int(entry.get("height", size[0])), int(entry.get("width", size[1])))
            if json_size != size:
                raise DataError(
                    f"{ann_path}: image {file_name} is {size[1]}x{size[0]} (w x h, EXIF-oriented) but the json says "
                    f"{json_size[1]}x{json_size[0]}; boxes would be misplaced. Fix: correct width/height in the json."
                )
            classes: list[int] = []
            boxes: list[list[float]] = []
            polygons: list[tuple[float, ...]] = []
            rles: list[Any] = []
            annotations_here = per_image.get(int(entry["id"]), [])
            for annotation in annotations_here:
                where = f"{ann_path}: annotation id {annotation.get('id')} ({file_name})"
                category = int(annotation.get("category_id", -1))
                if category == mask_id:
                    segmentation = annotation.get("segmentation")
                    if isinstance(segmentation, list):
                        polygons.extend(tuple(float(v) for v in poly) for poly in segmentation if len(poly) >= 6)
                    elif isinstance(segmentation, dict):
                        rles.append(segmentation)
                    else:
                        raise DataError(f"{where}: mask category annotation without a segmentation")
                    continue
                if category not in contiguous:
                    raise DataError(
                        f"{where}: unknown category_id {category}; categories: {sorted(contiguous)}. "
                        "Fix: add it to 'categories' or correct the annotation."
                    )
                if annotation.get("iscrowd", 0) and not include_crowd:
                    builder.stats.crowd_ignored += 1
                    continue
                bbox = annotation.get("bbox")
                if not isinstance(bbox, list | tuple) or len(bbox) != 4:
                    raise DataError(f"{where}: 'bbox' must be [x, y, w, h] in pixels, got {bbox!r}")
                try:
                    x, y, w, h = (float(value) for value in bbox)
                except (TypeError, ValueError) as error:
                    raise DataError(f"{where}: non-numeric bbox {bbox!r}") from error
                if not all(math.isfinite(value) for value in (x, y, w, h)):
                    raise DataError(f"{where}: non-finite bbox {bbox!r}")
                height, width = size
                classes.append(contiguous[category])
                boxes.append([x / width, y / height, (x + w) / width, (y + h) / height])
            if mask_id is not None:
                mask: MaskSource | None
                if polygons or rles:
                    mask = SegmentMask(size[0], size[1], tuple(polygons), tuple(rles), f"{ann_path} ({file_name})")
                else:
                    mask = _resolve_mask(
                        image, None, missing_mask, builder.stats, builder.missing_masks,
                        expected=f"a '{mask_category}' segmentation in {ann_path.name}",
                    )
            else:
                if mask_dir is not None:
                    mask_file = mask_dir / f"{Path(file_name).stem}.png"
                else:
                    mask_file = derive_sibling(image, "masks", ".png")
                mask = _resolve_mask(image, mask_file, missing_mask, builder.stats, builder.missing_masks)
            builder.add(image, size, np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes, np.int64), mask)
        if missing_images:
            if skip_bad:
                builder.stats.skipped += len(missing_images)
                builder.stats.skipped_files.extend(missing_images)
            else:
                _raise_listed(
                    f"image file(s) listed in {ann_path} not found",
                    missing_images,
                    f"check data.images_{split} (looked in {image_dir} and {root}), or set data.skip_bad=true.",
                )
        index.splits[split], index.stats[split] = builder.finish()
    if index is None:
        raise DataError("COCO format needs at least data.ann_train (path to the instances json)")
    return index
