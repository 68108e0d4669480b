"""Datasets and the datamodule of the anomaly task: defect-free training images, a labelled test set.

One category per datamodule (``data.category=all`` is a loop over datamodules, in ``fgkd.tasks.anomaly``).
Layouts (``data.layout``): ``mvtec`` and ``btad`` read ``data.root``; ``synthtex`` generates the embedded
dataset into the cache (``fgkd.data.synth.synthtex``) and reads it as MVTec. Images: RGB, resized to
``imgsz``×``imgsz`` (bilinear, square as the RD papers), ImageNet-normalised. Masks: resized bilinearly, then
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
from fgkd.data.formats.mvtec import index_mvtec
from fgkd.data.formats.mvtec import list_categories as mvtec_categories
from fgkd.data.imageio import read_image, read_mask

LAYOUTS = ("synthtex", "mvtec", "btad")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_square(image: np.ndarray, imgsz: int) -> np.ndarray:
    """``[imgsz, imgsz, 3]`` (bilinear; INTER_AREA when shrinking, like an antialiased resize)."""
    shrink = image.shape[0] > imgsz or image.shape[1] > imgsz
    return cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def load_rgb(path: str | os.PathLike[str], imgsz: int) -> np.ndarray:
    """RGB uint8 ``[imgsz, imgsz, 3]`` of an image file (:func:`resize_square`)."""
    return resize_square(read_image(path), imgsz)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB → ImageNet-normalised float CHW."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def load_mask(path: str | os.PathLike[str] | None, imgsz: int, threshold: float | str = "auto") -> torch.Tensor:
    if path is None:
        return torch.zeros(imgsz, imgsz, dtype=torch.uint8)
    mask = read_mask(path, threshold).astype(np.float32)
    resized = cv2.resize(mask, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy((resized > 0.5).astype(np.uint8))


class AnomalyDataset(Dataset):
    """``{"images", "masks", "labels", "index"}`` per sample (normal images: an all-zero mask)."""

    def __init__(self, samples: list[AnomalySample], imgsz: int, mask_threshold: float | str = "auto") -> None:
        self.samples, self.imgsz, self.mask_threshold = list(samples), int(imgsz), mask_threshold

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        return {"images": normalize(load_rgb(sample.image, self.imgsz)),
                "masks": load_mask(sample.mask, self.imgsz, self.mask_threshold),
                "labels": torch.tensor(sample.label, dtype=torch.long), "index": torch.tensor(i, dtype=torch.long)}


def list_layout_categories(layout: str, root: str | os.PathLike[str]) -> list[str]:
    return btad_categories(root) if layout == "btad" else mvtec_categories(root)


class AnomalyDataModule(pl.LightningDataModule):
    """One category of a layout (module docstring). ``synthtex``: the generator settings (SynthTexSettings)."""

    def __init__(self, layout: str = "synthtex", root: str | None = None, category: str = "woven", imgsz: int = 256,
                 batch_size: int = 16, val_batch_size: int | None = None, num_workers: int = 2,
                 pin_memory: bool | None = None, skip_bad: bool = False, mask_threshold: float | str = "auto",
                 synthtex: Mapping[str, Any] | None = None, cache_root: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise DataError(f"data.layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
        if layout != "synthtex" and not root:
            raise DataError(f"data={layout} needs data.root=<folder holding the {layout} categories>")
        self.layout, self.category, self.imgsz = layout, str(category), int(imgsz)
        self.root_arg, self.synthtex, self.cache_root = root, dict(synthtex or {}), cache_root
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
        return Path(str(self.root_arg)).expanduser()

    def categories(self) -> list[str]:
        return list_layout_categories(self.layout, self.root())

    def prepare_data(self) -> None:
        self.root()  # generates SynthTex once, on one process

    def setup(self, stage: str | None = None) -> None:
        if self.index is None:
            indexer = index_btad if self.layout == "btad" else index_mvtec
            self.index = indexer(self.root(), self.category, skip_bad=self.skip_bad)
            print(self.index.summary(), flush=True)

    @property
    def train_set(self) -> AnomalyDataset:
        self.setup()
        assert self.index is not None
        return AnomalyDataset(self.index.train, self.imgsz, self.mask_threshold)

    @property
    def test_set(self) -> AnomalyDataset:
        self.setup()
        assert self.index is not None
        return AnomalyDataset(self.index.test, self.imgsz, self.mask_threshold)

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
