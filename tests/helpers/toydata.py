"""Tiny hand-made datasets in the YOLO and COCO layouts, for tests (of this package and others).

Images are flat colour: background ``BACKGROUND_RGB`` and foreground (mask) ``FOREGROUND_RGB``, so a test
can tell from the pixels alone where the mask must be. Boxes are given in pixels and written exactly
(YOLO normalised with full float precision, COCO ``[x, y, w, h]``), so both layouts describe the same boxes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

TOY_NAMES = ("corrosion", "damaged_insulation", "dent")
BACKGROUND_RGB = (0, 0, 0)
FOREGROUND_RGB = (0, 255, 0)


@dataclass
class ToySample:
    stem: str
    split: str
    image: np.ndarray  # RGB uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    boxes: list[tuple[int, float, float, float, float]] = field(default_factory=list)  # (cls, x1, y1, x2, y2) px


def toy_sample(stem: str, split: str, width: int, height: int, band: tuple[int, int], boxes=()) -> ToySample:
    """A horizontal 'pipe' band of rows [band[0], band[1]) as foreground."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND_RGB
    mask = np.zeros((height, width), bool)
    mask[band[0] : band[1]] = True
    image[mask] = FOREGROUND_RGB
    return ToySample(stem, split, image, mask, list(boxes))


def default_samples() -> list[ToySample]:
    """Six samples (4 train, 2 val) of different sizes and aspect ratios, 0-3 boxes each."""
    return [
        toy_sample("a", "train", 96, 64, (20, 40), [(0, 10, 22, 30, 38), (2, 50, 25, 90, 35)]),
        toy_sample("b", "train", 64, 96, (40, 70), [(1, 5, 45, 40, 60)]),
        toy_sample("c", "train", 80, 80, (10, 30), []),
        toy_sample("d", "train", 128, 64, (30, 50), [(0, 0, 30, 20, 48), (1, 100, 32, 127, 50), (2, 60, 33, 80, 45)]),
        toy_sample("e", "val", 96, 64, (20, 40), [(2, 40, 21, 60, 39)]),
        toy_sample("f", "val", 64, 64, (0, 20), [(0, 8, 2, 24, 18)]),
    ]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), mask.astype(np.uint8) * 255):
        raise OSError(f"cannot write {path}")


def write_yolo(root: str | Path, samples: Sequence[ToySample] | None = None, names: Sequence[str] = TOY_NAMES) -> Path:
    """Contract layout: data.yaml, images/<split>/<stem>.png, labels/<split>/<stem>.txt, masks/<split>/<stem>.png."""
    root = Path(root)
    samples = default_samples() if samples is None else samples
    splits = sorted({sample.split for sample in samples})
    content = {"names": list(names), "nc": len(names)}
    content.update({split: f"images/{split}" for split in splits})
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    for sample in samples:
        height, width = sample.image.shape[:2]
        _write_png(root / "images" / sample.split / f"{sample.stem}.png", sample.image)
        _write_mask(root / "masks" / sample.split / f"{sample.stem}.png", sample.mask)
        lines = []
        for cls, x1, y1, x2, y2 in sample.boxes:
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            w, h = (x2 - x1) / width, (y2 - y1) / height
            lines.append(f"{cls} {cx!r} {cy!r} {w!r} {h!r}")
        label = root / "labels" / sample.split / f"{sample.stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))
    return root


def write_coco(
    root: str | Path,
    samples: Sequence[ToySample] | None = None,
    names: Sequence[str] = TOY_NAMES,
    category_ids: Sequence[int] | None = None,
    mask_category: str | None = None,
    mask_as_rle: bool = False,
) -> Path:
    """images/<split>/*.png + annotations/instances_<split>.json; masks as PNGs under masks/<split>
    or, with ``mask_category``, as that category's polygons (or RLE) in the json."""
    root = Path(root)
    samples = default_samples() if samples is None else samples
    category_ids = list(category_ids) if category_ids is not None else [10 * (i + 1) for i in range(len(names))]
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, names, strict=True)]
    mask_id = None
    if mask_category is not None:
        mask_id = max(category_ids) + 7
        categories.append({"id": mask_id, "name": mask_category})
    for split in sorted({sample.split for sample in samples}):
        images, annotations = [], []
        for image_id, sample in enumerate((s for s in samples if s.split == split), start=1):
            height, width = sample.image.shape[:2]
            _write_png(root / "images" / split / f"{sample.stem}.png", sample.image)
            images.append({"id": image_id, "file_name": f"{sample.stem}.png", "width": width, "height": height})
            for cls, x1, y1, x2, y2 in sample.boxes:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_ids[cls],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
            if mask_id is None:
                _write_mask(root / "masks" / split / f"{sample.stem}.png", sample.mask)
            elif sample.mask.any():
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": mask_id,
                        "segmentation": _rle(sample.mask) if mask_as_rle else _polygons(sample.mask),
                        "iscrowd": int(mask_as_rle),
                    }
                )
        ann = root / "annotations" / f"instances_{split}.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Pixel-edge polygons of each connected region (exact for axis-aligned rectangles)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        polygons.append([float(v) for v in (x, y, x + w, y, x + w, y + h, x, y + h)])
    return polygons


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths starting with zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}
