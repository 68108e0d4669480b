"""Datamodule end to end: resized-image cache, batch format, data report, workers, Hydra configs, SynthPipes."""

from __future__ import annotations

import os
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import toydata

from fgkd.data import imageio
from fgkd.data.cache import ResizedImageCache, cache_key, load_source
from fgkd.data.datamodule import DetectionDataModule
from fgkd.data.formats import DataError, index_yolo

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


def _module(root, tmp_path, **kwargs):
    settings = dict(root=root, imgsz=64, batch_size=2, num_workers=0, cache_dir=tmp_path / "cache", progress=False, report=False)
    settings.update(kwargs)
    return DetectionDataModule(**settings)


@pytest.fixture
def yolo_root(tmp_path):
    return toydata.write_yolo(tmp_path / "yolo")


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    original = imageio.read_image

    def counting(path, **kwargs):
        calls.append(Path(path).name)
        return original(path, **kwargs)

    monkeypatch.setattr(imageio, "read_image", counting)
    return calls


# ---------------------------------------------------------------------------------------------- cache


def test_cache_is_built_once_and_later_epochs_do_not_decode(yolo_root, tmp_path, count_decodes):
    module = _module(yolo_root, tmp_path, augment={"mosaic": 1.0})
    module.setup("fit")
    assert sorted(count_decodes) == sorted(["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"])  # built once
    count_decodes.clear()
    loader = module.train_dataloader()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        assert sum(len(batch["paths"]) for batch in loader) == 4
    next(iter(module.val_dataloader()))
    assert count_decodes == []  # every epoch read the cache, including mosaic partners
    rerun = _module(yolo_root, tmp_path)  # a new run with the same sources and size reuses the entries
    rerun.setup("fit")
    assert count_decodes == []
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporaries


def test_without_cache_every_load_decodes(yolo_root, tmp_path, count_decodes):
    module = _module(yolo_root, tmp_path, cache=False, augment=None)
    module.setup("fit")
    assert count_decodes == [] and not (tmp_path / "cache").exists()
    list(module.train_dataloader())
    list(module.train_dataloader())
    assert len(count_decodes) == 8


def test_cache_key_tracks_mtime_size_target_and_mask(yolo_root):
    record = index_yolo(yolo_root).splits["train"][0]
    key = cache_key(record, 64)
    assert cache_key(record, 64) == key
    assert cache_key(record, 96) != key  # target size
    stat = record.image.stat()
    os.utime(record.image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key(record, 64) != key  # mtime
    key = cache_key(record, 64)
    image = cv2.imread(str(record.image))
    cv2.imwrite(str(record.image), image, [cv2.IMWRITE_PNG_COMPRESSION, 0])  # same pixels, other size
    os.utime(record.image, ns=(stat.st_atime_ns, record.image.stat().st_mtime_ns))
    assert record.image.stat().st_size != stat.st_size and cache_key(record, 64) != key
    key = cache_key(record, 64)
    mask_stat = record.mask.stat()
    os.utime(record.mask, ns=(mask_stat.st_atime_ns, mask_stat.st_mtime_ns + 10**9))
    assert cache_key(record, 64) != key  # the mask is part of the entry


def test_cache_entry_equals_a_fresh_decode(yolo_root, tmp_path):
    record = index_yolo(yolo_root).splits["train"][3]  # 128 x 64 -> 64 x 32
    cache = ResizedImageCache(tmp_path / "c", 64)
    assert cache.build([record], progress=False) == []
    stored = cache.load(record)
    fresh = load_source(record, 64)
    assert stored.image.shape == (32, 64, 3) and stored.orig_shape == (64, 128)
    np.testing.assert_array_equal(stored.image, fresh.image)
    np.testing.assert_array_equal(stored.mask, fresh.mask)


def test_undecodable_file_found_at_cache_build(yolo_root, tmp_path):
    # header and IEND intact (passes the cheap index check) but the pixel data is garbage
    path = yolo_root / "images" / "train" / "b.png"
    data = bytearray(path.read_bytes())
    data[60:-20] = bytes(len(data) - 80)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"b\.png"):
        _module(yolo_root, tmp_path).setup("fit")
    module = _module(yolo_root, tmp_path, skip_bad=True)
    module.setup("fit")
    stats = module.index.stats["train"]
    assert stats.skipped == 1 and stats.images == 3 and len(module.datasets["train"]) == 3
    assert stats.boxes_per_class == {0: 2, 1: 1, 2: 2}  # b's box (class 1) no longer counted


# ---------------------------------------------------------------------------------------------- batch


def test_batch_matches_the_contract(yolo_root, tmp_path):
    module = _module(yolo_root, tmp_path, augment=None, batch_size=4)
    module.setup("fit")
    assert module.num_classes == 3 and module.class_names == list(toydata.TOY_NAMES)
    batch = next(iter(module.val_dataloader()))
    assert set(batch) == {"images", "masks", "targets", "paths", "orig_shapes", "letterbox"}
    assert batch["images"].shape == (2, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert 0.0 <= batch["images"].min() and batch["images"].max() <= 1.0
    assert batch["masks"].shape == (2, 1, 64, 64) and batch["masks"].dtype == torch.bool
    assert torch.allclose(batch["images"][0, :, 0, 0], torch.full((3,), 114 / 255))  # padding
    # val image e (96 x 64 -> 64 x 43, pad_y 10): box (40, 21, 60, 39) px; f (64 x 64): (8, 2, 24, 18)
    expected = torch.tensor(
        [[0, 2, 40 * 64 / 96, 21 * 43 / 64 + 10, 60 * 64 / 96, 39 * 43 / 64 + 10], [1, 0, 8, 2, 24, 18]]
    )
    assert torch.allclose(batch["targets"], expected, atol=1e-4)
    assert batch["orig_shapes"] == [(64, 96), (64, 64)]
    assert batch["letterbox"] == [(64 / 96, 0.0, 10.0), (1.0, 0.0, 0.0)]
    assert [Path(p).name for p in batch["paths"]] == ["e.png", "f.png"]


def test_teacher_views(yolo_root, tmp_path):
    pytest.importorskip("fgkd.preprocess")
    original = _module(yolo_root, tmp_path, augment=None, teacher_view="original")
    original.setup("fit")
    batch = next(iter(original.val_dataloader()))
    assert batch["teacher_images"] is batch["images"]
    preprocessed = _module(yolo_root, tmp_path, augment=None, preprocess={"combo": "rb", "blur_kernel": 5})
    preprocessed.setup("fit")
    batch = next(iter(preprocessed.train_dataloader()))
    teacher = batch["teacher_images"]
    assert teacher.shape == batch["images"].shape
    masks = batch["masks"].expand_as(teacher)
    assert (teacher[~masks] == 0).all() and torch.equal(teacher[masks], batch["images"][masks])
    with pytest.raises(ValueError, match="teacher_view"):
        _module(yolo_root, tmp_path, teacher_view="preprocessed")


def test_empty_batch_targets_have_six_columns(tmp_path):
    sample = toydata.toy_sample("z", "train", 64, 64, (0, 10))
    root = toydata.write_yolo(tmp_path / "d", [sample])
    module = _module(root, tmp_path, augment=None)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["targets"].shape == (0, 6)


# ---------------------------------------------------------------------------------------------- report


def test_report_counts(yolo_root, tmp_path, capsys):
    labels, masks, images = (yolo_root / kind / "train" for kind in ("labels", "masks", "images"))
    (labels / "c.txt").unlink()  # missing label
    (labels / "a.txt").write_text("0 0.1 0.5 0.4 0.2\n1 1.5 0.5 0.2 0.2\n2 0.5 0.5 0.3 0.2\n")  # clipped, dropped, ok
    cv2.imwrite(str(masks / "b.png"), np.ones((48, 32), np.uint8))  # half-size mask
    (masks / "d.png").unlink()  # missing mask, filled
    truncated = images / "x.jpg"
    cv2.imwrite(str(truncated), np.zeros((64, 64, 3), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:200])
    module = _module(yolo_root, tmp_path, skip_bad=True, missing_mask="empty", report=True)
    module.setup("fit")
    stats = module.index.stats["train"]
    assert (stats.images, stats.skipped, stats.missing_labels, stats.missing_masks) == (4, 1, 1, 1)
    assert (stats.resized_masks, stats.clipped, stats.dropped) == (1, 1, 1)
    # a: classes 0, 2 (the one outside dropped); b: 1; d: 0, 1, 2
    assert stats.boxes_per_class == {0: 2, 1: 2, 2: 2}
    printed = capsys.readouterr().out
    assert printed.strip() == module.report_text.strip()
    assert len(printed.strip().splitlines()) <= 25  # one screen
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.split()[:1] in (["train"], ["val"])}
    assert rows["train"] == ["4", "1", "1", "1", "1", "6", "1", "1", "0", "0", "0"]
    assert rows["val"] == ["2", "0", "0", "0", "0", "2", "0", "0", "0", "0", "0"]
    assert "x.jpg" in printed


# ---------------------------------------------------------------------------------------------- workers, mosaic


def test_workers_are_deterministic_and_see_the_mosaic_switch(yolo_root, tmp_path):
    def epochs(module, switch_off_at):
        loader = module.train_dataloader()
        seen = []
        for epoch in range(2):
            if epoch == switch_off_at:
                module.set_mosaic(False)
            loader.sampler.set_epoch(epoch)
            seen.append([(b["images"].clone(), b["targets"].clone(), b["paths"]) for b in loader])
        return seen

    in_process = _module(yolo_root, tmp_path, augment={"mosaic": 1.0, "degrees": 10})
    in_process.setup("fit")
    workers = _module(yolo_root, tmp_path, augment={"mosaic": 1.0, "degrees": 10}, num_workers=2)
    workers.setup("fit")
    expected, got = epochs(in_process, 1), epochs(workers, 1)  # persistent workers across both epochs
    for epoch_expected, epoch_got in zip(expected, got, strict=True):
        for (images_a, targets_a, paths_a), (images_b, targets_b, paths_b) in zip(epoch_expected, epoch_got, strict=True):
            assert paths_a == paths_b and torch.equal(images_a, images_b) and torch.equal(targets_a, targets_b)
    dataset = workers.datasets["train"]
    for images, _, paths in got[1]:  # epoch 1 ran with mosaic off, inside the persistent workers too
        for row, path in enumerate(paths):
            index = [str(r.image) for r in dataset.records].index(path)
            reference = torch.from_numpy(dataset[(index, 1, False)]["image"]).permute(2, 0, 1).float() / 255
            assert torch.equal(images[row], reference)
            assert not dataset.draw(index, 1, False).is_mosaic


def test_close_mosaic_follows_trainer_max_epochs(yolo_root, tmp_path):
    module = _module(yolo_root, tmp_path, close_mosaic=2)
    assert module.mosaic_active(100)  # no trainer: no schedule
    module.trainer = types.SimpleNamespace(max_epochs=5, is_global_zero=True)
    assert [module.mosaic_active(epoch) for epoch in range(5)] == [True, True, True, False, False]
    module.set_mosaic(False)
    assert not module.mosaic_active(0)


# ---------------------------------------------------------------------------------------------- configs


def _compose(compose_train, name, **data_overrides):
    overrides = [f"data={name}", "imgsz=64", "batch_size=2", "kd=none"]
    overrides += [f"{'+' if key.startswith('+') else ''}data.{key.lstrip('+')}={value}" for key, value in data_overrides.items()]
    return compose_train(*overrides)


def test_hydra_yolo_and_coco_configs_instantiate(tmp_path, compose_train):
    from fgkd.tasks.detect import DetectTask

    task = DetectTask()
    yolo_root = toydata.write_yolo(tmp_path / "yolo")
    cfg = _compose(compose_train, "yolo", root=str(yolo_root), cache_dir=str(tmp_path / "c"), num_workers=0)
    module = task.build_datamodule(cfg, "base")
    assert isinstance(module, DetectionDataModule) and module.imgsz == 64 and module.batch_size == 2
    assert module.num_classes == 3 and module.close_mosaic == 10  # the yolov8 recipe's
    coco_root = toydata.write_coco(tmp_path / "coco", mask_category="pipe")
    cfg = _compose(
        compose_train,
        "coco",
        root=str(coco_root),
        ann_train="annotations/instances_train.json",
        ann_val="annotations/instances_val.json",
        mask_category="pipe",
        cache_dir=str(tmp_path / "c"),
        num_workers=0,
        **{"+progress": False},
    )
    module = task.build_datamodule(cfg, "base")
    module.setup("fit")
    assert module.class_names == list(toydata.TOY_NAMES)
    assert next(iter(module.train_dataloader()))["images"].shape == (2, 3, 64, 64)
    for name in ("pdi", "synthpipes"):
        assert compose_train(f"data={name}").data["_target_"] == "fgkd.data.datamodule.DetectionDataModule"


def test_synthpipes_through_the_same_loader(tmp_path, compose_train):
    pytest.importorskip("fgkd.data.synth.synthpipes")
    from fgkd.tasks.detect import DetectTask

    cfg = _compose(
        compose_train,
        "synthpipes",
        **{"synthpipes.num_images": 6, "synthpipes.max_side": 96, "synthpipes.seed": 0},
        cache_root=str(tmp_path),
        num_workers=0,
        **{"+progress": False, "+report": False},
    )
    module = DetectTask().build_datamodule(cfg, "base")
    assert module.class_names == ["corrosion", "damaged_insulation", "dent"]
    module.setup("fit")
    assert Path(module.root).parent == tmp_path and (tmp_path / "resized").is_dir()
    stats = module.index.stats
    assert stats["train"].images + stats["val"].images == 6
    batch = next(iter(module.train_dataloader()))
    assert batch["images"].shape[1:] == (3, 64, 64) and batch["masks"].any()
    targets = batch["targets"]
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 64)).all() and (targets[:, 1] < 3).all()


def test_a_missing_or_empty_val_split_fails_before_training(tmp_path, compose_train):
    """Issue 15.9: a run without validation images trained, exited 0 and reported NaN metrics."""
    from fgkd.data.formats.common import DataError
    from fgkd.tasks.detect import prepare

    root = toydata.write_yolo(tmp_path / "d", [toydata.toy_sample("a", "train", 64, 64, (0, 10)),
                                               toydata.toy_sample("b", "train", 64, 64, (0, 12))])
    module = _module(root, tmp_path, augment=None)
    with pytest.raises(DataError, match=r"the val split (is not configured|has no images).*data.yaml"):
        prepare(module)


def test_soft_and_empty_masks_are_counted_or_refused(yolo_root, tmp_path):
    """Issue 15.8: a noisy 0..255 mask and an all-zero mask of an image with boxes were accepted silently."""
    from fgkd.data.formats.common import DataError

    masks = sorted((yolo_root / "masks" / "train").glob("*.png"))
    rng = np.random.default_rng(0)
    clean = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
    noisy = np.clip((clean > 0) * 200 + rng.integers(0, 60, clean.shape), 0, 255).astype(np.uint8)  # JPEG-like
    cv2.imwrite(str(masks[0]), noisy)
    cv2.imwrite(str(masks[1]), np.zeros_like(cv2.imread(str(masks[1]), cv2.IMREAD_GRAYSCALE)))
    module = _module(yolo_root, tmp_path)
    module.setup("fit")
    stats = module.index.stats["train"]
    assert (stats.soft_masks, stats.empty_masks_with_boxes) == (1, 1)
    assert "mask_soft" in module.report_text and "mask_empty" in module.report_text
    with pytest.raises(DataError, match=r"(?s)2 suspicious mask\(s\).*not binary.*all-zero mask but"):
        _module(yolo_root, tmp_path, mask_check="error").setup("fit")
    off = _module(yolo_root, tmp_path, mask_check="off")
    off.setup("fit")
    assert off.index.stats["train"].soft_masks == 0
