"""SynthTex: a seeded, atomic, cached MVTec-layout dataset whose defects a brightness baseline cannot solve."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from fgkd.data.anomaly_datamodule import AnomalyDataModule
from fgkd.data.formats.mvtec import index_mvtec, list_categories
from fgkd.data.imageio import read_mask
from fgkd.data.synth.synthtex import CATEGORIES, DEFECTS, ensure_dataset
from fgkd.lit.anomaly import baseline_maps
from fgkd.metrics.anomaly import anomaly_metrics

SMALL = {"size": 64, "num_train": 8, "num_test_good": 4, "num_test_per_defect": 3}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_generation_is_seeded_atomic_cached_and_in_the_mvtec_layout(tmp_path):
    root = ensure_dataset(tmp_path / "a", progress=False, **SMALL)
    assert ensure_dataset(tmp_path / "a", progress=False, **SMALL) == root  # cached: the same folder
    again = ensure_dataset(tmp_path / "b", progress=False, **SMALL)
    assert _digest(root) == _digest(again)  # seeded: the same bytes
    other = ensure_dataset(tmp_path / "c", progress=False, **{**SMALL, "seed": 1})
    assert _digest(other) != _digest(root)
    assert not list(root.parent.glob(f".{root.name}.tmp-*"))  # nothing half-written left behind
    assert list_categories(root) == sorted(CATEGORIES)
    for category in CATEGORIES:
        index = index_mvtec(root, category)
        assert len(index.train) == SMALL["num_train"]
        defects = {s.defect for s in index.test if s.label}
        assert defects == set(DEFECTS[category])
        assert sum(not s.label for s in index.test) == SMALL["num_test_good"]
        assert index.counts["empty_defect_masks"] == 0
        for sample in index.test:
            if sample.label:
                mask = read_mask(sample.mask)
                assert mask.shape == (64, 64) and 0 < mask.mean() < 0.2  # a real, local defect
    with pytest.raises(ValueError, match="synthtex.categories"):
        ensure_dataset(tmp_path / "d", progress=False, categories=["marble"])


def test_defects_are_not_solvable_by_brightness(fgkd_cache):
    """The trivial baseline (per-pixel distance to the mean training image) stays far from perfect on every
    category at the default settings; a dataset it solves would not show what distillation adds."""
    image_aurocs = []
    for category in CATEGORIES:
        dm = AnomalyDataModule("synthtex", category=category, imgsz=128, cache_root=str(fgkd_cache), num_workers=0)
        with contextlib.redirect_stdout(io.StringIO()):
            dm.setup()
        test = dm.test_set
        batch = [test[i] for i in range(len(test))]
        images = torch.stack([b["images"] for b in batch])
        masks = torch.stack([b["masks"] for b in batch]).bool()
        labels = torch.stack([b["labels"] for b in batch])
        metrics = anomaly_metrics(baseline_maps(images, dm.mean_train_image(), 4.0), masks, labels)
        assert metrics["image_auroc"] < 0.9, (category, metrics)
        image_aurocs.append(metrics["image_auroc"])
    assert float(np.mean(image_aurocs)) < 0.75
