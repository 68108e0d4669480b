"""The YOLO-with-masks layout: ``data.yaml``, ``images/<split>``, ``labels/<split>/*.txt``, ``masks/<split>``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fgkd.data.formats.common import (
    _MAX_NORMALIZED,
    DataError,
    DatasetIndex,
    MissingMaskPolicy,
    _resolve_mask,
    _SplitBuilder,
    derive_sibling,
)
from fgkd.data.imageio import IMAGE_SUFFIXES


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


