"""Datasets and the datamodule of the anomaly task: defect-free training images, a labelled test set.

One category per datamodule (``data.category=all`` is a loop over datamodules, in ``fgkd.tasks.anomaly``).
Layouts (``data.layout``): ``mvtec``, ``btad`` and ``mtd`` read ``data.root``; ``synthtex`` and ``synthtiles``
generate the embedded datasets into the cache (``fgkd.data.synth``) and read them as MVTec and MTD.
Images: RGB (gray replicated), brought to ``imgsz``×``imgsz`` by ``data.resize_mode`` — ``square`` (a plain
resize, as the RD papers; distorts MTD's 0.37–2.68 aspect ratios), ``letterbox`` (long side to ``imgsz``, the
rest padded with the ImageNet mean colour, i.e. 0 after normalisation; padded pixels count as normal pixels in
the pixel metrics) or ``shortcrop`` (short side to ``imgsz``, centre crop; a defect outside the crop leaves
its image defective with an empty mask) — ImageNet-normalised. Masks: the same geometry, bilinear, then
``> 0.5`` (anomaly_spec.md §2 pitfalls); evaluation is at ``imgsz`` (the official MVTec code evaluates at the
original resolution — numbers differ slightly, noted in README). The test split is the validation split, as
in every RD code base; the reported epoch is the last one (``fgkd.lit.anomaly``), never chosen on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fgkd.data.dataset import seed_worker
from fgkd.data.formats.anomaly_index import AnomalyIndex, AnomalySample
from fgkd.data.formats.btad import index_btad
from fgkd.data.formats.btad import list_categories as btad_categories
from fgkd.data.formats.common import DataError
from fgkd.data.formats.mtd import CATEGORY as MTD_CATEGORY
from fgkd.data.formats.mtd import index_mtd, is_mtd_root
from fgkd.data.formats.mvtec import index_mvtec
from fgkd.data.formats.mvtec import list_categories as mvtec_categories
from fgkd.data.imageio import read_image, read_mask
from fgkd.options import ANOMALY_LAYOUTS as LAYOUTS
from fgkd.options import GENERATED_LAYOUTS, RESIZE_MODES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_RGB = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = array.shape[0] > height or array.shape[1] > width  # INTER_AREA when shrinking: antialiased
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def fit_square(array: np.ndarray, imgsz: int, mode: str = "square", fill: float | tuple = 0) -> np.ndarray:
    """``array`` (``[H, W]`` or ``[H, W, C]``) brought to ``imgsz``×``imgsz`` by ``mode`` (module docstring)."""
    h, w = array.shape[:2]
    if mode == "square":
        return _resize(array, imgsz, imgsz)
    if mode not in RESIZE_MODES:
        raise DataError(f"data.resize_mode={mode!r}: choose one of {', '.join(RESIZE_MODES)}")
    scale = imgsz / (max(h, w) if mode == "letterbox" else min(h, w))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = _resize(array, nw, nh)
    if mode == "shortcrop":
        y0, x0 = (nh - imgsz) // 2, (nw - imgsz) // 2
        return resized[y0:y0 + imgsz, x0:x0 + imgsz]
    out = np.empty((imgsz, imgsz, *array.shape[2:]), array.dtype)
    out[...] = fill
    y0, x0 = (imgsz - nh) // 2, (imgsz - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = resized
    return out


def unfit_square(amap: np.ndarray, size: tuple[int, int], mode: str = "square") -> np.ndarray:
    """A ``[imgsz, imgsz]`` map back on the original ``(height, width)`` grid: the inverse of :func:`fit_square`
    (``letterbox``: the padding dropped; ``shortcrop``: the parts outside the crop, never seen, get the map's
    minimum)."""
    h, w = size
    imgsz = amap.shape[0]
    if mode == "square":
        return cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    scale = imgsz / (max(h, w) if mode == "letterbox" else min(h, w))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if mode == "letterbox":
        y0, x0 = (imgsz - nh) // 2, (imgsz - nw) // 2
        return cv2.resize(amap[y0:y0 + nh, x0:x0 + nw], (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((nh, nw), float(amap.min()), amap.dtype)
    y0, x0 = (nh - imgsz) // 2, (nw - imgsz) // 2
    canvas[y0:y0 + imgsz, x0:x0 + imgsz] = amap
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_LINEAR)


def load_rgb(path: str | os.PathLike[str], imgsz: int, mode: str = "square") -> np.ndarray:
    """RGB uint8 ``[imgsz, imgsz, 3]`` of an image file (:func:`fit_square`; letterbox pads the mean colour)."""
    return fit_square(read_image(path), imgsz, mode, MEAN_RGB)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB → ImageNet-normalised float CHW."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def load_mask(path: str | os.PathLike[str] | None, imgsz: int, threshold: float | str = "auto",
              mode: str = "square") -> torch.Tensor:
    if path is None:
        return torch.zeros(imgsz, imgsz, dtype=torch.uint8)
    mask = read_mask(path, threshold).astype(np.float32)
    if mode == "square":  # bilinear in both directions, as before the other modes existed
        resized = cv2.resize(mask, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
    else:
        resized = fit_square(mask, imgsz, mode, 0.0)
    return torch.from_numpy((resized > 0.5).astype(np.uint8))


class AnomalyDataset(Dataset):
    """``{"images", "masks", "labels", "index"}`` per sample (normal images: an all-zero mask)."""

    def __init__(self, samples: list[AnomalySample], imgsz: int, mask_threshold: float | str = "auto",
                 resize_mode: str = "square") -> None:
        if resize_mode not in RESIZE_MODES:
            raise DataError(f"data.resize_mode={resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
        self.samples, self.imgsz, self.mask_threshold = list(samples), int(imgsz), mask_threshold
        self.resize_mode = resize_mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        return {"images": normalize(load_rgb(sample.image, self.imgsz, self.resize_mode)),
                "masks": load_mask(sample.mask, self.imgsz, self.mask_threshold, self.resize_mode),
                "labels": torch.tensor(sample.label, dtype=torch.long), "index": torch.tensor(i, dtype=torch.long)}


def list_layout_categories(layout: str, root: str | os.PathLike[str]) -> list[str]:
    if layout in ("mtd", "synthtiles"):
        return [MTD_CATEGORY] if is_mtd_root(root) else []
    return btad_categories(root) if layout == "btad" else mvtec_categories(root)


class AnomalyDataModule(pl.LightningDataModule):
    """One category of a layout (module docstring). ``synthtex`` / ``synthtiles``: the generators' settings
    (SynthTexSettings, SynthTilesSettings); ``split``, ``train_list``, ``train_fraction``: the MTD split
    (``fgkd.data.formats.mtd``)."""

    def __init__(self, layout: str = "synthtex", root: str | None = None, category: str = "woven", imgsz: int = 256,
                 batch_size: int = 16, val_batch_size: int | None = None, num_workers: int = 2,
                 pin_memory: bool | None = None, skip_bad: bool = False, mask_threshold: float | str = "auto",
                 resize_mode: str = "square", synthtex: Mapping[str, Any] | None = None,
                 synthtiles: Mapping[str, Any] | None = None, split: str = "public", train_list: str | None = None,
                 train_fraction: float = 0.8, cache_root: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise DataError(f"data.layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
        if layout not in GENERATED_LAYOUTS and not root:
            raise DataError(f"data={layout} needs data.root=<folder holding the {layout} categories>")
        if resize_mode not in RESIZE_MODES:
            raise DataError(f"data.resize_mode={resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
        self.layout, self.category, self.imgsz = layout, str(category), int(imgsz)
        self.root_arg, self.synthtex, self.cache_root = root, dict(synthtex or {}), cache_root
        self.synthtiles, self.resize_mode = dict(synthtiles or {}), resize_mode
        self.split, self.train_list, self.train_fraction = split, train_list, float(train_fraction)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers, self.skip_bad, self.mask_threshold = int(num_workers), bool(skip_bad), mask_threshold
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.seed = int(seed)
        self.index: AnomalyIndex | None = None

    # -- the files ------------------------------------------------------------------------------------------
    def root(self) -> Path:
        if self.layout == "synthtex":
            from fgkd.data.synth.synthtex import ensure_dataset

            return ensure_dataset(self.cache_root, **self.synthtex)
        if self.layout == "synthtiles":
            from fgkd.data.synth.synthtiles import ensure_dataset as ensure_tiles

            return ensure_tiles(self.cache_root, **self.synthtiles)
        return Path(str(self.root_arg)).expanduser()

    def categories(self) -> list[str]:
        return list_layout_categories(self.layout, self.root())

    def prepare_data(self) -> None:
        self.root()  # generates SynthTex once, on one process

    def setup(self, stage: str | None = None) -> None:
        if self.index is None:
            root = self.root()
            if self.layout in ("mtd", "synthtiles"):
                train_list = self.train_list
                if self.layout == "synthtiles" and train_list is None:
                    from fgkd.data.synth.synthtiles import TRAIN_LIST

                    train_list = str(root / TRAIN_LIST)  # the generator's own split
                self.index = index_mtd(root, self.category, split=self.split, train_list=train_list,
                                       train_fraction=self.train_fraction, seed=self.seed, skip_bad=self.skip_bad)
            else:
                indexer = index_btad if self.layout == "btad" else index_mvtec
                self.index = indexer(root, self.category, skip_bad=self.skip_bad)
            print(self.index.summary(), flush=True)

    @property
    def train_set(self) -> AnomalyDataset:
        self.setup()
        assert self.index is not None
        return AnomalyDataset(self.index.train, self.imgsz, self.mask_threshold, self.resize_mode)

    @property
    def test_set(self) -> AnomalyDataset:
        self.setup()
        assert self.index is not None
        return AnomalyDataset(self.index.test, self.imgsz, self.mask_threshold, self.resize_mode)

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                          worker_init_fn=seed_worker, generator=generator, drop_last=drop_last)

    def train_dataloader(self) -> DataLoader:
        train = self.train_set
        if len(train) < 2:
            raise DataError(f"{self.layout}/{self.category}: {len(train)} training image(s); BatchNorm in the "
                            "bottleneck and MS-CAM needs at least 2")
        # a last batch of one image would fail in train-mode BatchNorm (MS-CAM's pooled branch): drop only that
        one_left = len(train) % self.batch_size == 1 and len(train) > self.batch_size
        return self._loader(train, self.batch_size, shuffle=True, drop_last=one_left)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def mean_train_image(self) -> torch.Tensor:
        """The mean normalised training image ``[3, S, S]`` (the trivial baseline's reference)."""
        total = None
        dataset = self.train_set
        for i in range(len(dataset)):
            x = dataset[i]["images"].double()
            total = x if total is None else total + x
        assert total is not None
        return (total / len(dataset)).float()
