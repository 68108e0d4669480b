"""The detection dataset (X, M, boxes and optionally the teacher's view X_M), its sampler and collate.

Randomness: each sample's augmentation comes from ``np.random.default_rng([seed, epoch, index])``, so it
is the same in any worker, with any number of workers, and reproducible. The epoch and the mosaic switch
reach the (possibly persistent) workers through the sampler, which runs in the main process and yields
``(index, epoch, mosaic_enabled)`` keys — attributes set on the main-process dataset copy would not.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fgkd.data.augment import (
    AugmentConfig,
    AugmentDraw,
    apply_hsv,
    box_areas,
    compose_mosaic,
    draw_augmentation,
    letterbox,
    warp_sample,
)
from fgkd.data.cache import LoadedImage, ResizedImageCache
from fgkd.data.formats import SampleRecord
from fgkd.data.imageio import BadImageError

log = logging.getLogger(__name__)

TEACHER_VIEWS = ("preprocessed", "original")
SampleKey = int | tuple[int, int, bool]


def resolve_teacher_view(preprocess: str | None, teacher_view: str | None) -> str | None:
    """``teacher_view`` None means "preprocessed" when a combo is given, else no teacher images."""
    if teacher_view is None:
        return "preprocessed" if preprocess else None
    if teacher_view not in TEACHER_VIEWS:
        raise ValueError(f"data.teacher_view={teacher_view!r}; allowed: null, {', '.join(TEACHER_VIEWS)}")
    if teacher_view == "preprocessed" and not preprocess:
        raise ValueError(
            "data.teacher_view=preprocessed needs a preprocessing combo: set data.preprocess (e.g. rb_sf) "
            "or teacher_view=original"
        )
    return teacher_view


class DetectionDataset(Dataset):
    """Letterboxed (and, for training, augmented) samples of one split.

    A sample is a dict: ``image`` uint8 [S,S,3] RGB, ``mask`` bool [S,S], ``boxes`` float32 [K,4] xyxy px,
    ``classes`` int64 [K], ``path``, ``orig_shape`` (h, w), ``letterbox`` (scale, pad_x, pad_y) — for
    augmented samples the letterbox before augmentation — and ``teacher_image`` uint8 [S,S,3] when the
    teacher view is "preprocessed" (X_M = preprocess.apply(X, M) of the augmented X, M).
    """

    def __init__(
        self,
        records: Sequence[SampleRecord],
        imgsz: int,
        cache: ResizedImageCache | None = None,
        augment: AugmentConfig | Mapping[str, Any] | None = None,
        mosaic: float | None = None,
        preprocess: str | None = None,
        preprocess_params: Mapping[str, Any] | None = None,
        teacher_view: str | None = None,
        seed: int = 0,
        skip_bad: bool = False,
    ):
        self.records = list(records)
        self.imgsz = int(imgsz)
        self.cache = cache if cache is not None else ResizedImageCache(None, imgsz, enabled=False)
        if augment is not None and not isinstance(augment, AugmentConfig):
            augment = AugmentConfig.from_mapping(augment)
        self.augment: AugmentConfig | None = augment
        if mosaic is None:
            mosaic = augment.mosaic if augment is not None else 0.0
        self.mosaic = float(mosaic)
        if not 0.0 <= self.mosaic <= 1.0:
            raise ValueError(f"data.mosaic={mosaic} must be a probability in [0, 1] (or true/false)")
        self.preprocess = preprocess
        self.preprocess_params = dict(preprocess_params or {})
        self.teacher_view = resolve_teacher_view(preprocess, teacher_view)
        self.seed = int(seed)
        self.skip_bad = bool(skip_bad)
        self._apply_preprocess: Callable[..., np.ndarray] | None = None
        if self.teacher_view == "preprocessed":
            self._apply_preprocess = _load_preprocess(preprocess, self.preprocess_params)

    def __len__(self) -> int:
        return len(self.records)

    # -- loading -------------------------------------------------------------------------------

    def load(self, index: int) -> LoadedImage:
        return self.cache.load(self.records[index])

    def _load_tolerant(self, index: int) -> tuple[int, LoadedImage]:
        """With skip_bad, a file that broke after indexing is replaced by the next readable one."""
        for attempt in range(len(self.records)):
            position = (index + attempt) % len(self.records)
            try:
                return position, self.load(position)
            except BadImageError as error:
                if not self.skip_bad:
                    raise
                log.warning("skipping unreadable %s (%s)", error.path, error.reason)
        raise BadImageError(self.records[index].image, "no readable image left in this split")

    # -- randomness ----------------------------------------------------------------------------

    def rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def draw(self, index: int, epoch: int = 0, mosaic_enabled: bool = True) -> AugmentDraw | None:
        """The augmentation of sample ``index`` at ``epoch`` (None without augmentation)."""
        if self.augment is None:
            return None
        rng = self.rng(index, epoch)
        use_mosaic = bool(mosaic_enabled and self.mosaic > 0 and rng.random() < self.mosaic)
        use_mixup = bool(use_mosaic and self.augment.mixup > 0 and rng.random() < self.augment.mixup)
        draw = draw_augmentation(rng, self.augment, self.imgsz, use_mosaic, len(self.records), use_mixup)
        if draw.mixup_index is not None:
            partner = draw_augmentation(rng, self.augment, self.imgsz, True, len(self.records), False)
            draw = dataclasses.replace(draw, mixup_draw=partner)
        return draw

    # -- sample --------------------------------------------------------------------------------

    def _augment(
        self, index: int, loaded: LoadedImage, draw: AugmentDraw
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mosaic (optional) -> one warp for image, mask and boxes -> HSV on the image only."""
        assert self.augment is not None
        record = self.records[index]
        size = self.imgsz
        if draw.is_mosaic:
            tiles = [(loaded.image, loaded.mask, self._pixel_boxes(record, loaded))]
            tile_classes = [record.classes]
            for partner in draw.mosaic_indices:
                partner, partner_loaded = self._load_tolerant(partner)
                partner_record = self.records[partner]
                partner_boxes = self._pixel_boxes(partner_record, partner_loaded)
                tiles.append((partner_loaded.image, partner_loaded.mask, partner_boxes))
                tile_classes.append(partner_record.classes)
            assert draw.mosaic_center is not None
            image, mask, tile_boxes, tile_areas = compose_mosaic(tiles, draw.mosaic_center, size)
            boxes = np.concatenate(tile_boxes).reshape(-1, 4)
            reference_areas = np.concatenate(tile_areas)
            classes = np.concatenate(tile_classes)
        else:
            image, mask, pad_x, pad_y = letterbox(loaded.image, loaded.mask, size)
            boxes = self._pixel_boxes(record, loaded) + np.array([pad_x, pad_y, pad_x, pad_y], np.float32)
            reference_areas = box_areas(boxes)
            classes = record.classes
        image, mask, boxes, keep = warp_sample(image, mask, boxes, reference_areas, draw.matrix, size, self.augment)
        return apply_hsv(image, draw.hsv_gains), mask, boxes, classes[keep]

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        if isinstance(key, tuple | list):
            index, epoch, mosaic_enabled = int(key[0]), int(key[1]), bool(key[2])
        else:
            index, epoch, mosaic_enabled = int(key), 0, True
        index, loaded = self._load_tolerant(index)
        record = self.records[index]
        size = self.imgsz
        scale = size / max(loaded.orig_shape)
        image, mask, pad_x, pad_y = letterbox(loaded.image, loaded.mask, size)
        boxes = self._pixel_boxes(record, loaded) + np.array([pad_x, pad_y, pad_x, pad_y], np.float32)
        classes = record.classes
        draw = self.draw(index, epoch, mosaic_enabled)
        if draw is not None:
            image, mask, boxes, classes = self._augment(index, loaded, draw)
            if draw.mixup_draw is not None and draw.mixup_index is not None:
                partner, partner_loaded = self._load_tolerant(draw.mixup_index)
                image2, mask2, boxes2, classes2 = self._augment(partner, partner_loaded, draw.mixup_draw)
                ratio = draw.mixup_ratio
                blended = image.astype(np.float32) * ratio + image2.astype(np.float32) * (1 - ratio)
                image = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
                mask = mask | mask2  # both pictures are visible, so are both foregrounds
                boxes = np.concatenate([boxes, boxes2])
                classes = np.concatenate([classes, classes2])
        sample: dict[str, Any] = {
            "image": np.ascontiguousarray(image),
            "mask": np.ascontiguousarray(mask),
            "boxes": boxes.astype(np.float32).reshape(-1, 4),
            "classes": np.asarray(classes, np.int64).reshape(-1),
            "path": str(record.image),
            "orig_shape": loaded.orig_shape,
            "letterbox": (float(scale), float(pad_x), float(pad_y)),
        }
        if self._apply_preprocess is not None:
            teacher = self._apply_preprocess(sample["image"], sample["mask"], self.preprocess, **self.preprocess_params)
            sample["teacher_image"] = np.ascontiguousarray(teacher, dtype=np.uint8)
        return sample

    @staticmethod
    def _pixel_boxes(record: SampleRecord, loaded: LoadedImage) -> np.ndarray:
        """Normalised boxes -> pixels of the resized (not yet letterboxed) image."""
        height, width = loaded.image.shape[:2]
        return (record.boxes * np.array([width, height, width, height], np.float32)).astype(np.float32)


def _load_preprocess(combo: str | None, params: Mapping[str, Any]) -> Callable[..., np.ndarray]:
    """fgkd.preprocess.apply, after checking the combo and parameters (fail at setup, not in a worker)."""
    try:
        from fgkd import preprocess as preprocess_module
    except ImportError as error:
        raise ImportError(
            "data.preprocess is set but fgkd.preprocess cannot be imported; it builds the teacher's view"
        ) from error
    combos = getattr(preprocess_module, "COMBOS", None)
    if combos is not None and combo not in combos:
        raise ValueError(f"data.preprocess={combo!r}; allowed: {', '.join(combos)}")
    resolve_params = getattr(preprocess_module, "resolve_params", None)
    if resolve_params is not None:
        resolve_params(**params)
    return preprocess_module.apply


class EpochSampler(Sampler):
    """Yields ``(index, epoch, mosaic_enabled)`` keys; shuffles with ``default_rng([seed, epoch])``.

    Lightning calls :meth:`set_epoch` before each training epoch; without it (e.g. under Lightning's
    distributed wrapper) the epoch advances by one per iteration. ``mosaic_policy(epoch)`` decides the
    mosaic switch once per epoch, at the start of the iteration.
    """

    def __init__(
        self,
        length: int,
        shuffle: bool = True,
        seed: int = 0,
        mosaic_policy: Callable[[int], bool] | None = None,
    ):
        self.length = int(length)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.mosaic_policy = mosaic_policy

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        mosaic_enabled = bool(self.mosaic_policy(epoch)) if self.mosaic_policy is not None else True
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.length)
            if self.shuffle
            else np.arange(self.length)
        )
        for index in order.tolist():
            yield (index, epoch, mosaic_enabled)


def collate_detection(samples: Sequence[Mapping[str, Any]], teacher_view: str | None = None) -> dict[str, Any]:
    """Stack samples into a detection batch (``images``, ``teacher_images``, ``masks``, ``targets``).

    With ``teacher_view="original"`` ``teacher_images`` is the very same tensor as ``images``."""
    images = torch.from_numpy(np.stack([sample["image"] for sample in samples])).permute(0, 3, 1, 2)
    batch: dict[str, Any] = {
        "images": images.float().div_(255.0).contiguous(),
        "masks": torch.from_numpy(np.stack([sample["mask"] for sample in samples])).unsqueeze(1),
    }
    if all("teacher_image" in sample for sample in samples):
        teacher = torch.from_numpy(np.stack([sample["teacher_image"] for sample in samples])).permute(0, 3, 1, 2)
        batch["teacher_images"] = teacher.float().div_(255.0).contiguous()
    elif teacher_view == "original":
        batch["teacher_images"] = batch["images"]
    rows = []
    for batch_index, sample in enumerate(samples):
        count = len(sample["classes"])
        if count:
            rows.append(
                np.concatenate(
                    [
                        np.full((count, 1), batch_index, np.float32),
                        np.asarray(sample["classes"], np.float32).reshape(-1, 1),
                        np.asarray(sample["boxes"], np.float32).reshape(-1, 4),
                    ],
                    axis=1,
                )
            )
    batch["targets"] = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros((0, 6), dtype=torch.float32)
    batch["paths"] = [sample["path"] for sample in samples]
    batch["orig_shapes"] = [tuple(sample["orig_shape"]) for sample in samples]
    batch["letterbox"] = [tuple(sample["letterbox"]) for sample in samples]
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: distinct global seeds per worker (for any library using them) and no
    OpenCV thread pool inside workers (the workers are the parallelism)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)
