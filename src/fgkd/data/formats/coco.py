"""The COCO layout: instances json (boxes, categories) + mask PNGs or a mask category's polygons/RLE."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fgkd.data.formats.common import (
    DataError,
    DatasetIndex,
    MaskSource,
    MissingMaskPolicy,
    SegmentMask,
    _raise_listed,
    _resolve_mask,
    _SplitBuilder,
    derive_sibling,
)


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
        all_ids = [int(entry["id"]) for entry in content.get("images", [])]
        image_ids = set(all_ids)
        if len(image_ids) < len(all_ids):
            repeated = sorted(i for i, n in Counter(all_ids).items() if n > 1)
            raise DataError(f"{ann_path}: image ids {repeated[:10]} appear more than once in 'images'; every "
                            "annotation of such an id would be given to each of them. Fix: give every image its own id")
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
