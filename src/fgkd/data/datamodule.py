"""``DetectionDataModule``: one loader path for SynthPipes, YOLO and COCO data (Hydra-instantiable).

setup(): index the splits (labels + headers, bad-input policies), build the resized-image cache once
(progress bar), print the one-screen data report. Train loader: augmentation (flip, HSV, affine, optional
mosaic switched off for the last ``close_mosaic`` epochs or by :meth:`set_mosaic`), val/test loaders:
letterbox only. Both produce the contract's batch (``teacher_images`` when a preprocess combo is set).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from fgkd.config import to_plain
from fgkd.data.augment import AugmentConfig
from fgkd.data.cache import ResizedImageCache, default_cache_root
from fgkd.data.dataset import (
    DetectionDataset,
    EpochSampler,
    collate_detection,
    resolve_teacher_view,
    seed_worker,
)
from fgkd.data.formats import (
    MISSING_MASK_POLICIES,
    DataError,
    DatasetIndex,
    coco_categories,
    index_coco,
    index_yolo,
    parse_names,
    read_data_yaml,
)
from fgkd.data.report import format_report

log = logging.getLogger(__name__)

FORMATS = ("yolo", "coco")
SPLITS = ("train", "val", "test")
#: data.mask_check: what a soft mask (JPEG/anti-aliased: > SOFT_MASK_FRACTION of its pixels neither 0 nor max)
#: or an all-zero mask of an image with boxes does: fail, be counted in the report, or nothing
MASK_CHECKS = ("error", "warn", "off")
SOFT_MASK_FRACTION = 0.02


class DetectionDataModule(L.LightningDataModule):
    """Detection data with foreground masks; see the module docstring and conf/data/*.yaml.

    Args:
        root: dataset folder (YOLO: holds data.yaml; COCO: base for relative paths). Not needed with
            ``synthpipes``.
        format: "yolo" | "coco".
        synthpipes: SynthPipes settings (num_images, max_side, seed, ...): the dataset is generated once
            into the cache (``fgkd.data.synth.synthpipes.ensure_dataset``) and read as YOLO.
        data_yaml: YOLO data.yaml (default ``root/data.yaml``); ``splits`` ({train: ..., val: ...} folders or
            .txt lists) and ``names`` override it.
        ann_train / ann_val / ann_test: COCO instances json per split; images_<split> (default
            ``images/<split>``) and masks_<split> (PNG folder; default: images/ -> masks/ rule);
            ``mask_category``: a category whose segmentations form the mask (then not a detection class).
        imgsz: square network input S (multiple of 32). batch_size / val_batch_size / num_workers / pin_memory.
        augment: {hsv_h, hsv_s, hsv_v, degrees, translate, scale, shear, perspective, fliplr, flipud, mosaic,
            mixup, ...} (the model recipes' ``augment`` blocks fit as they are)
            (:class:`AugmentConfig`); None/false = no training augmentation.
        mosaic: probability of a 4-image mosaic per training sample (true = 1.0; None = augment.mosaic,
            default 1.0); close_mosaic: switch mosaic (and mixup, which rides on it) off for the last N epochs
            (needs a trainer with max_epochs).
        preprocess: teacher-view combo (str, e.g. "rb_sf") or a conf/preprocess mapping {combo, params...};
            preprocess_params: extra parameters. teacher_view: None | "preprocessed" | "original".
        cache / cache_dir / cache_root / cache_threads: the resized-image cache (default
            ``<cache_root>/resized``).
        skip_bad: skip unreadable images (counted) instead of failing; missing_mask: error | full | empty;
        mask_threshold: mask pixel > threshold is foreground; min_box_size: boxes under this many source
            pixels (after clipping) are dropped.
        seed: base of every random draw (shuffle and augmentation are functions of seed, epoch, index).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        format: str = "yolo",
        synthpipes: Mapping[str, Any] | None = None,
        data_yaml: str | None = None,
        splits: Mapping[str, Any] | None = None,
        names: Sequence[str] | Mapping[int, str] | None = None,
        ann_train: str | None = None,
        ann_val: str | None = None,
        ann_test: str | None = None,
        images_train: str | None = None,
        images_val: str | None = None,
        images_test: str | None = None,
        masks_train: str | None = None,
        masks_val: str | None = None,
        masks_test: str | None = None,
        mask_category: str | None = None,
        imgsz: int = 640,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        augment: Mapping[str, Any] | bool | None = True,
        mosaic: float | bool | None = None,
        close_mosaic: int = 0,
        preprocess: str | Mapping[str, Any] | None = None,
        preprocess_params: Mapping[str, Any] | None = None,
        teacher_view: str | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        cache_root: str | os.PathLike | None = None,
        cache_threads: int | None = None,
        skip_bad: bool = False,
        missing_mask: str = "error",
        mask_check: str = "warn",
        mask_threshold: float | str = "auto",
        min_box_size: float = 1.0,
        seed: int = 0,
        report: bool = True,
        progress: bool = True,
    ):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"data.format={format!r}; allowed: {', '.join(FORMATS)}")
        if synthpipes is not None and format != "yolo":
            raise ValueError("data.synthpipes writes the YOLO layout: use data.format=yolo with it")
        if root is None and synthpipes is None:
            raise ValueError("set data.root (the dataset folder) or data.synthpipes (generated data)")
        if int(imgsz) <= 0 or int(imgsz) % 32:
            raise ValueError(f"imgsz={imgsz} must be a positive multiple of 32 (the detectors' largest stride)")
        if missing_mask not in MISSING_MASK_POLICIES:
            raise ValueError(f"data.missing_mask={missing_mask!r}; allowed: {', '.join(MISSING_MASK_POLICIES)}")
        self.root = None if root is None else Path(root).expanduser()
        self.format = format
        self.synthpipes = dict(to_plain(synthpipes)) if synthpipes is not None else None
        self.data_yaml = data_yaml
        self.splits = to_plain(splits)
        self.names = to_plain(names)
        annotations = zip(SPLITS, (ann_train, ann_val, ann_test), strict=True)
        self.annotations = {split: ann for split, ann in annotations if ann}
        self.image_dirs = dict(zip(SPLITS, (images_train, images_val, images_test), strict=True))
        self.mask_dirs = dict(zip(SPLITS, (masks_train, masks_val, masks_test), strict=True))
        self.mask_category = mask_category
        self.imgsz = int(imgsz)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        augment = to_plain(augment)
        if augment is True:
            augment = {}
        self.augment = None if augment in (None, False) else AugmentConfig.from_mapping(augment)
        if mosaic is None:
            mosaic = self.augment.mosaic if self.augment is not None else 0.0
        self.mosaic = float(mosaic)
        if not 0.0 <= self.mosaic <= 1.0:
            raise ValueError(f"data.mosaic={mosaic} must be a probability in [0, 1] (or true/false)")
        self.close_mosaic = int(close_mosaic)
        self.preprocess, self.preprocess_params = self._split_preprocess(to_plain(preprocess), to_plain(preprocess_params))
        self.teacher_view = resolve_teacher_view(self.preprocess, teacher_view)
        self.cache_enabled = bool(cache)
        self.cache_root = Path(cache_root).expanduser() if cache_root else None
        default_dir = (self.cache_root or default_cache_root()) / "resized"
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_dir
        self.cache_threads = cache_threads
        self.skip_bad = bool(skip_bad)
        self.missing_mask = missing_mask
        if mask_check not in MASK_CHECKS:
            raise DataError(f"data.mask_check={mask_check!r}: choose one of {', '.join(MASK_CHECKS)}")
        self.mask_check = mask_check
        self.mask_threshold = mask_threshold if mask_threshold == "auto" else float(mask_threshold)
        self.min_box_size = float(min_box_size)
        self.seed = int(seed)
        self.report = bool(report)
        self.progress = bool(progress)
        self.index: DatasetIndex | None = None
        self.datasets: dict[str, DetectionDataset] = {}
        self.report_text = ""
        self._mosaic_enabled = True
        self._train_sampler: EpochSampler | None = None
        self._class_names: list[str] | None = None

    # -- configuration helpers -----------------------------------------------------------------

    @staticmethod
    def _split_preprocess(preprocess: Any, params: Any) -> tuple[str | None, dict[str, Any]]:
        extra = dict(params or {})
        if preprocess is None:
            return None, extra
        if isinstance(preprocess, Mapping):
            values = dict(preprocess)
            combo = values.pop("combo", None)
            if combo is None:
                raise ValueError("data.preprocess mapping needs a 'combo' key (as in conf/preprocess/*.yaml)")
            return str(combo), {**values, **extra}
        return str(preprocess), extra

    def dataset_root(self) -> Path:
        """The dataset folder; with ``synthpipes`` settings it is generated on first use."""
        if self.synthpipes is not None:
            from fgkd.data.synth import synthpipes

            root = synthpipes.ensure_dataset(cache_root=self.cache_root, progress=self.progress, **self.synthpipes)
            self.root = Path(root)
        assert self.root is not None
        return self.root

    @property
    def class_names(self) -> list[str]:
        """Class names (index = class id); read cheaply from data.yaml / the json before setup()."""
        if self.index is not None:
            return list(self.index.class_names)
        if self._class_names is None:
            self._class_names = self._read_class_names()
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _read_class_names(self) -> list[str]:
        root = self.dataset_root()
        if self.format == "yolo":
            if self.names is not None:
                return parse_names(self.names, "data.names")
            path = Path(self.data_yaml) if self.data_yaml else root / "data.yaml"
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise DataError(f"{path} not found; set data.names or data.data_yaml")
            content = read_data_yaml(path)
            if "names" not in content:
                raise DataError(f"{path}: no 'names' key")
            return parse_names(content["names"], str(path), content.get("nc"))
        import json

        first = Path(next(iter(self.annotations.values()), "")) if self.annotations else None
        if first is None:
            raise DataError("COCO format needs data.ann_train (path to the instances json)")
        first = first if first.is_absolute() else root / first
        return coco_categories(json.loads(first.read_text()), str(first), self.mask_category)[1]

    # -- Lightning hooks -----------------------------------------------------------------------

    def _build_index(self) -> DatasetIndex:
        root = self.dataset_root()
        common = dict(skip_bad=self.skip_bad, missing_mask=self.missing_mask, min_box_size=self.min_box_size)
        if self.format == "yolo":
            return index_yolo(root, self.data_yaml, self.splits, self.names, SPLITS, **common)
        if "train" not in self.annotations:
            raise DataError("COCO format needs data.ann_train (path to the train instances json)")
        return index_coco(
            root,
            self.annotations,
            {split: self.image_dirs[split] for split in self.annotations},
            {split: self.mask_dirs[split] for split in self.annotations},
            self.mask_category,
            **common,
        )

    def _cache(self) -> ResizedImageCache:
        return ResizedImageCache(self.cache_dir, self.imgsz, self.mask_threshold, enabled=self.cache_enabled)

    def _build_cache(self, index: DatasetIndex, progress: bool) -> None:
        """Decode every image once into the cache; a decode failure is an error (or skipped, counted)."""
        cache = self._cache()
        for split, records in index.splits.items():
            failures = cache.build(records, f"caching {split} images ({self.imgsz}px)", self.cache_threads, progress)
            if not failures:
                continue
            if not self.skip_bad:
                listed = "\n  ".join(f"{error.path}: {error.reason}" for _, error in failures[:20])
                raise DataError(
                    f"{len(failures)} unreadable file(s) in split '{split}':\n  {listed}\n"
                    "Fix: replace them or set data.skip_bad=true to skip them (counted in the report)."
                )
            failed = {position for position, _ in failures}
            index.splits[split] = [record for position, record in enumerate(records) if position not in failed]
            stats = index.stats[split]
            for position, error in failures:
                stats.skipped += 1
                stats.skipped_files.append(error.path)
                stats.images -= 1
                for cls in records[position].classes.tolist():
                    stats.boxes_per_class[cls] -= 1

    def _check_masks(self, index: DatasetIndex, cache: ResizedImageCache) -> None:
        """Soft masks (a binarised JPEG keeps its noise) and all-zero masks of images with boxes (the teacher's
        view of such an image removes the damage): counted per split, or an error with data.mask_check=error."""
        if self.mask_check == "off" or not cache.enabled:
            return
        problems: list[str] = []
        for split, records in index.splits.items():
            stats = index.stats[split]
            for record in records:
                if isinstance(record.mask, str):  # missing_mask=full|empty: a policy, not a file
                    continue
                soft, has_foreground = cache.mask_info(record)
                if soft > SOFT_MASK_FRACTION:
                    stats.soft_masks += 1
                    problems.append(f"{record.image}: mask not binary ({soft:.0%} of its pixels in between)")
                if not has_foreground and len(record.boxes):
                    stats.empty_masks_with_boxes += 1
                    problems.append(f"{record.image}: all-zero mask but {len(record.boxes)} box(es)")
        if problems and self.mask_check == "error":
            listed = "\n  ".join(problems[:20])
            raise DataError(f"{len(problems)} suspicious mask(s):\n  {listed}\nFix: export binary masks (PNG, 0/255) "
                            "that cover the objects, or set data.mask_check=warn to count them only")

    def prepare_data(self) -> None:
        """Rank 0 only: generate SynthPipes data and fill the resized-image cache (files only, no state)."""
        index = self._build_index()
        self._build_cache(index, self.progress)

    def setup(self, stage: str | None = None) -> None:
        if self.index is None:
            index = self._build_index()
            self._build_cache(index, self.progress and self._is_global_zero())
            self._check_masks(index, self._cache())  # once, on the index this module keeps (not in prepare_data)
            self.index = index
            self._class_names = list(index.class_names)
            self.datasets = {split: self._make_dataset(split) for split in index.splits}
            self.report_text = format_report(index.stats, index.class_names, self._report_title(), self._report_notes())
            if self.report:
                _print_rank_zero(self.report_text)

    def require_val_split(self) -> None:
        """Every reported metric comes from the val split: a missing or empty one fails before training
        (``fgkd.tasks.detect.prepare`` asks; it used to train, exit 0 and report NaN metrics)."""
        dataset = self._dataset("val")
        if dataset is None or len(dataset) == 0:
            found = "has no images" if dataset is not None else "is not configured"
            raise DataError(
                f"{self.root}: the val split {found} (see the data report above); every reported metric comes from "
                "it. Give validation images (YOLO: a 'val:' folder in data.yaml; COCO: data.ann_val), or, knowing "
                "that the numbers are then optimistic, point 'val:' at the training images"
            )

    def _is_global_zero(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is None or trainer.is_global_zero

    def _report_title(self) -> str:
        source = f"synthpipes {self.synthpipes}" if self.synthpipes is not None else self.format
        return f"data: {source}  root={self.root}  imgsz={self.imgsz}  classes={self.num_classes}"

    def _report_notes(self) -> list[str]:
        cache = f"cache={self.cache_dir}" if self.cache_enabled else "cache=off"
        augment = "augment=off"
        if self.augment is not None:
            augment = f"augment=on mosaic={self.mosaic} mixup={self.augment.mixup} close_mosaic={self.close_mosaic}"
        teacher = f"teacher_view={self.teacher_view}" + (f" ({self.preprocess})" if self.preprocess else "")
        return [f"{cache}  {augment}  {teacher}"]

    def _make_dataset(self, split: str) -> DetectionDataset:
        assert self.index is not None
        training = split == "train"
        return DetectionDataset(
            self.index.splits[split],
            self.imgsz,
            cache=self._cache(),
            augment=self.augment if training else None,
            mosaic=self.mosaic if training else 0.0,
            preprocess=self.preprocess,
            preprocess_params=self.preprocess_params,
            teacher_view=self.teacher_view,
            seed=self.seed,
            skip_bad=self.skip_bad,
        )

    # -- mosaic switch ---------------------------------------------------------------------------

    def set_mosaic(self, enabled: bool) -> None:
        """Switch mosaic on/off from the next training epoch on (e.g. from on_train_epoch_start)."""
        self._mosaic_enabled = bool(enabled)

    def mosaic_active(self, epoch: int) -> bool:
        """Mosaic for ``epoch``: the switch, and off for the last ``close_mosaic`` epochs."""
        if not self._mosaic_enabled or self.mosaic <= 0:
            return False
        trainer = getattr(self, "trainer", None)
        max_epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
        if self.close_mosaic > 0 and max_epochs is not None and max_epochs > 0:
            return epoch < max_epochs - self.close_mosaic
        return True

    # -- loaders ---------------------------------------------------------------------------------

    def _loader(self, dataset: DetectionDataset, batch_size: int, sampler: Any = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
            collate_fn=functools.partial(collate_detection, teacher_view=self.teacher_view),
            drop_last=False,
        )

    def _dataset(self, split: str) -> DetectionDataset | None:
        if self.index is None:
            self.setup("fit")
        return self.datasets.get(split)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        if dataset is None or len(dataset) == 0:
            raise DataError("the train split has no images (see the data report above)")
        self._train_sampler = EpochSampler(len(dataset), shuffle=True, seed=self.seed, mosaic_policy=self.mosaic_active)
        return self._loader(dataset, self.batch_size, self._train_sampler)

    def val_dataloader(self) -> DataLoader | list:
        dataset = self._dataset("val")
        if dataset is None or len(dataset) == 0:
            log.warning("no val split configured: validation is skipped")
            return []
        return self._loader(dataset, self.val_batch_size)

    def has_split(self, split: str) -> bool:
        """True when ``split`` has at least one image (e.g. a held-out ``test`` split for reported numbers)."""
        dataset = self._dataset(split)
        return dataset is not None and len(dataset) > 0

    def test_dataloader(self) -> DataLoader:
        """The held-out test split (never the val split in its place: numbers on it are reported as test)."""
        if not self.has_split("test"):
            raise DataError("the data has no test split: SynthPipes takes data.synthpipes.test_fraction=0.3, a "
                            "YOLO data.yaml a `test:` entry, COCO data.ann_test")
        return self._loader(self._dataset("test"), self.val_batch_size)


@rank_zero_only
def _print_rank_zero(text: str) -> None:
    print(text, flush=True)
