"""Tests for the SynthPipes generator: on-disk layout, label/mask invariants, determinism, caching."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from fgkd.data.synth import synthpipes as sp

TINY = {"max_side": 128}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_labels(path: Path) -> list[list[float]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        assert len(parts) == 5, f"{path}: bad line {line!r}"
        rows.append([float(x) for x in parts])
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sp") / "ds"
    return sp.generate(out, num_images=16, seed=3, val_fraction=0.25, progress=False, **TINY)


@pytest.fixture(scope="module")
def samples() -> list[sp.SynthSample]:
    settings = sp.SynthPipesSettings(seed=11, max_side=96)
    return [sp.render_sample(i, settings) for i in range(40)]


def test_layout_and_data_yaml(dataset: Path):
    cfg = yaml.safe_load((dataset / "data.yaml").read_text())
    assert cfg["names"] == ["corrosion", "damaged_insulation", "dent"]
    assert cfg["nc"] == 3
    assert cfg["train"] == "images/train" and cfg["val"] == "images/val"
    expected = sp.SynthPipesSettings(num_images=16, seed=3, val_fraction=0.25, **TINY).as_dict()
    assert cfg["generator"] == expected
    assert cfg["generator"]["version"] == sp.GENERATOR_VERSION
    marker = json.loads((dataset / sp.COMPLETE_MARKER).read_text())
    assert marker["generator"] == expected
    train = sorted((dataset / "images/train").glob("*.jpg"))
    val = sorted((dataset / "images/val").glob("*.jpg"))
    assert (len(train), len(val)) == (12, 4)  # round(16 * 0.25) = 4 val images
    for image_path in train + val:
        split = image_path.parent.name
        label = dataset / "labels" / split / f"{image_path.stem}.txt"
        mask_path = dataset / "masks" / split / f"{image_path.stem}.png"
        assert label.is_file() and mask_path.is_file()
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert image.ndim == 3 and image.shape[2] == 3
        assert mask.ndim == 2 and mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert max(image.shape[:2]) == 128
        assert mask.any(), f"{mask_path}: every image shows at least one pipe"
    # no temporary leftovers next to the dataset
    assert [p.name for p in dataset.parent.iterdir()] == [dataset.name]
    assert len(sp.load_meta(dataset)) == 16


def test_labels_are_valid_and_lie_on_the_pipe_mask(dataset: Path):
    meta = {m["stem"]: m for m in sp.load_meta(dataset)}
    n_boxes = 0
    for label in sorted(dataset.glob("labels/*/*.txt")):
        mask = cv2.imread(str(dataset / "masks" / label.parent.name / f"{label.stem}.png"), cv2.IMREAD_GRAYSCALE) > 0
        h, w = mask.shape
        rows = _read_labels(label)
        assert len(rows) == len(meta[label.stem]["damages"])
        for (cls, cx, cy, bw, bh), damage in zip(rows, meta[label.stem]["damages"], strict=True):
            n_boxes += 1
            assert cls in (0, 1, 2) and cls == damage["cls"]
            assert 0 < bw <= 1 and 0 < bh <= 1
            assert cx - bw / 2 >= -1e-6 and cx + bw / 2 <= 1 + 1e-6
            assert cy - bh / 2 >= -1e-6 and cy + bh / 2 <= 1 + 1e-6
            x1, y1, x2, y2 = damage["box"]
            assert np.allclose([cx * w, cy * h, bw * w, bh * h], [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1],
                               atol=1e-3)
            inside = mask[y1:y2, x1:x2]
            # the box is tight around damage pixels, which are all pipe pixels: each border row/column of the
            # box holds a mask pixel, and the box holds at least as many mask pixels as damage pixels
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert inside.sum() >= damage["pixels"]
            assert inside.mean() >= 0.35
    assert n_boxes > 0


def test_distractors_are_unlabelled_and_off_the_mask(dataset: Path):
    records = sp.load_meta(dataset)
    with_distractors = [m for m in records if m["distractors"]]
    assert with_distractors, "some images must carry background distractors"
    for record in with_distractors:
        mask = cv2.imread(str(dataset / "masks" / record["split"] / f"{record['stem']}.png"), cv2.IMREAD_GRAYSCALE) > 0
        for item in record["distractors"]:
            x1, y1, x2, y2 = item["box"]
            outside = ~mask[y1:y2, x1:x2]
            assert outside[0].any() and outside[-1].any() and outside[:, 0].any() and outside[:, -1].any()
            assert outside.sum() >= item["pixels"]


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path: Path):
    a = sp.generate(tmp_path / "a", 4, seed=5, max_side=96, progress=False)
    b = sp.generate(tmp_path / "b", 4, seed=5, max_side=96, progress=False)
    c = sp.generate(tmp_path / "c", 4, seed=6, max_side=96, progress=False)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a == files_b
    images = [k for k in files_a if k.endswith(".jpg")]
    assert len(images) == 4
    assert all(files_a[k] != files_c.get(k) for k in images)


def test_image_content_does_not_depend_on_dataset_size():
    small = sp.SynthPipesSettings(num_images=4, seed=2, max_side=96)
    large = sp.SynthPipesSettings(num_images=50, seed=2, max_side=96)
    s, lg = sp.render_sample(3, small), sp.render_sample(3, large)
    assert np.array_equal(s.image, lg.image) and np.array_equal(s.mask, lg.mask)
    assert np.array_equal(s.boxes, lg.boxes)


def _changed_pixels(a: sp.SynthSample, b: sp.SynthSample) -> np.ndarray:
    return np.abs(a.image.astype(np.int16) - b.image.astype(np.int16)).max(axis=2) > 3


def _near_boxes(shape, boxes, pad: int) -> np.ndarray:
    near = np.zeros(shape, bool)
    for x1, y1, x2, y2 in np.asarray(boxes, int).reshape(-1, 4):
        near[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad] = True
    return near


_RING = np.ones((7, 7), np.uint8)  # 3 px: the photo blur (sigma <= 0.9 px at these sizes) spreads no further


def test_damage_pixels_are_on_the_pipe_and_inside_their_boxes():
    # every stage has its own random stream, so switching damages off changes only the damage pixels
    boxes_seen = 0
    for index in range(10):
        damaged = sp.render_sample(index, seed=21, max_side=128, empty_fraction=0.0)
        clean = sp.render_sample(index, seed=21, max_side=128, empty_fraction=1.0)
        assert clean.meta["damages"] == [] and np.array_equal(damaged.mask, clean.mask)
        changed = _changed_pixels(damaged, clean)
        near_mask = cv2.dilate(damaged.mask, _RING) > 0
        assert not (changed & ~near_mask).any(), f"image {index}: damage drawn off the pipe"
        assert not (changed & ~_near_boxes(changed.shape, damaged.boxes, 3)).any(), f"image {index}: unlabelled damage"
        for x1, y1, x2, y2 in damaged.boxes.astype(int):
            assert changed[y1:y2, x1:x2].any()
            boxes_seen += 1
    assert boxes_seen >= 10


def test_distractor_pixels_stay_off_the_pipe():
    seen = 0
    for index in range(10):
        cluttered = sp.render_sample(index, seed=22, max_side=128, max_distractors=6)
        plain = sp.render_sample(index, seed=22, max_side=128, max_distractors=0)
        assert plain.meta["distractors"] == [] and np.array_equal(cluttered.image.shape, plain.image.shape)
        assert np.array_equal(cluttered.boxes, plain.boxes)  # distractors are never labelled
        changed = _changed_pixels(cluttered, plain)
        deep_mask = cv2.erode(cluttered.mask, _RING) > 0
        assert not (changed & deep_mask).any(), f"image {index}: distractor drawn on the pipe"
        boxes = [d["box"] for d in cluttered.meta["distractors"]]
        assert not (changed & ~_near_boxes(changed.shape, boxes, 3)).any()
        seen += len(boxes)
    assert seen >= 10


def test_occluders_are_cut_out_of_the_mask():
    # occlusion happens after the pipes are drawn and consumes the same random numbers before it,
    # so the pipes are identical and the occluded mask must be a strict subset
    cut = 0
    for index in range(6):
        clear = sp.render_sample(index, seed=4, max_side=96, occlusion_prob=0.0)
        blocked = sp.render_sample(index, seed=4, max_side=96, occlusion_prob=1.0)
        assert clear.meta["occluders"] == [] and blocked.meta["occluders"]
        assert not np.any((blocked.mask > 0) & (clear.mask == 0))
        cut += int(((clear.mask > 0) & (blocked.mask == 0)).sum() > 0)
    assert cut >= 4


def test_class_coverage_empty_images_and_aspect_ratios(samples):
    classes = np.concatenate([s.classes for s in samples])
    assert set(classes.tolist()) == {0, 1, 2}
    assert any(len(s.boxes) == 0 for s in samples)
    assert sum(len(s.boxes) > 0 for s in samples) >= 0.6 * len(samples)
    ratios = {round(s.image.shape[1] / s.image.shape[0], 2) for s in samples}
    assert len(ratios) >= 3
    assert any(r < 1 for r in ratios) and any(r > 1 for r in ratios)  # portrait and landscape
    assert any(s.meta["pipes"][0]["kind"] != "straight" for s in samples)  # elbows
    for s in samples:
        h, w = s.mask.shape
        assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
        assert ((s.boxes[:, 2] > s.boxes[:, 0]) & (s.boxes[:, 3] > s.boxes[:, 1])).all()
        assert (s.boxes >= 0).all() and (s.boxes[:, [0, 2]] <= w).all() and (s.boxes[:, [1, 3]] <= h).all()


def test_sizes_follow_the_pdi_cameras():
    settings = sp.SynthPipesSettings(num_images=30, max_side=200, full_size=False)
    full = sp.SynthPipesSettings(num_images=30, full_size=True)
    for index in range(30):
        (w, h), source = sp.image_size(index, settings)
        assert max(w, h) == 200
        assert tuple(sorted(source, reverse=True)) in sp.PDI_SIZES
        assert abs(w / h - source[0] / source[1]) < 0.02
        assert sp.image_size(index, full)[0] == source


def test_yolo_lines_golden():
    lines = sp.yolo_lines(np.array([[10, 20, 30, 60], [-5, 190, 20, 210]], np.float32), np.array([0, 2]), 100, 200)
    assert lines[0] == "0 0.200000 0.200000 0.200000 0.200000"
    assert lines[1] == "2 0.100000 0.975000 0.200000 0.050000"  # clipped to the image


def test_split_sizes():
    assert sp.split_of(sp.SynthPipesSettings(num_images=10, val_fraction=0.2)).count("val") == 2
    assert sp.split_of(sp.SynthPipesSettings(num_images=1, val_fraction=0.2)) == ["train"]
    assert sp.split_of(sp.SynthPipesSettings(num_images=3, val_fraction=0.0)).count("val") == 0
    assert sp.split_of(sp.SynthPipesSettings(num_images=3, val_fraction=0.01)).count("val") == 1


def test_a_test_split_is_held_out_without_moving_val_or_the_cache_key():
    plain = sp.SynthPipesSettings(num_images=50, val_fraction=0.2)
    held = sp.SynthPipesSettings(num_images=50, val_fraction=0.2, test_fraction=0.3)
    a, b = sp.split_of(plain), sp.split_of(held)
    assert b.count("test") == 15 and b.count("val") == 10 and b.count("train") == 25
    assert [i for i, s in enumerate(a) if s == "val"] == [i for i, s in enumerate(b) if s == "val"]  # val unchanged
    assert "test_fraction" not in plain.as_dict() and held.as_dict()["test_fraction"] == 0.3
    assert plain.key() == sp.SynthPipesSettings(num_images=50, val_fraction=0.2, test_fraction=0.0).key()
    assert plain.key() != held.key()
    with pytest.raises(ValueError, match="test_fraction"):
        sp.SynthPipesSettings(val_fraction=0.5, test_fraction=0.5)


def test_bad_settings_name_the_key(tmp_path: Path):
    with pytest.raises(ValueError, match="empty_fraction"):
        sp.SynthPipesSettings(empty_fraction=1.5)
    with pytest.raises(ValueError, match="max_side"):
        sp.SynthPipesSettings(max_side=8)
    with pytest.raises(TypeError, match="unknown synthpipes setting"):
        sp.ensure_dataset(tmp_path, num_imgs=3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        sp.generate(tmp_path / "busy", 2, 0, max_side=64, progress=False)
    assert (tmp_path / "busy" / "x").read_text() == "keep"


def test_ensure_dataset_caches_by_settings(tmp_path: Path):
    settings = {"num_images": 3, "seed": 1, "max_side": 64}
    first = sp.ensure_dataset(tmp_path, progress=False, **settings)
    assert first.parent == tmp_path.absolute() and first.name.startswith("synthpipes-")
    assert first == sp.dataset_dir(tmp_path, **settings)
    marker = first / sp.COMPLETE_MARKER
    stamp = (marker.stat().st_mtime_ns, (first / "data.yaml").stat().st_mtime_ns)
    again = sp.ensure_dataset(tmp_path, progress=False, **settings)
    assert again == first
    assert (marker.stat().st_mtime_ns, (first / "data.yaml").stat().st_mtime_ns) == stamp  # not regenerated
    other = sp.ensure_dataset(tmp_path, progress=False, **{**settings, "empty_fraction": 0.5})
    assert other != first and (other / sp.COMPLETE_MARKER).is_file()
    assert sp.dataset_dir(tmp_path, **{**settings, "seed": 2}) != first


def test_incomplete_cache_dir_is_regenerated(tmp_path: Path):
    settings = {"num_images": 2, "seed": 7, "max_side": 64}
    target = sp.dataset_dir(tmp_path, **settings)
    target.mkdir(parents=True)
    (target / "half_written.txt").write_text("crashed run")
    stale_tmp = tmp_path / f".{target.name}.tmp-123-dead"
    stale_tmp.mkdir()
    out = sp.ensure_dataset(tmp_path, progress=False, **settings)
    assert out == target
    assert not (out / "half_written.txt").exists() and not stale_tmp.exists()
    assert (out / sp.COMPLETE_MARKER).is_file() and len(list(out.glob("images/*/*.jpg"))) == 2
    # a marker written for other settings does not count as complete either
    marker = json.loads((out / sp.COMPLETE_MARKER).read_text())
    marker["generator"]["seed"] = 8
    (out / sp.COMPLETE_MARKER).write_text(json.dumps(marker))
    sp.ensure_dataset(tmp_path, progress=False, **settings)
    assert json.loads((out / sp.COMPLETE_MARKER).read_text())["generator"]["seed"] == 7


def _ensure_in_child(args):
    root, settings = args
    return str(sp.ensure_dataset(root, progress=False, **settings))


def test_concurrent_ensure_dataset_builds_one_dataset(tmp_path: Path):
    settings = {"num_images": 4, "seed": 9, "max_side": 64}
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.map(_ensure_in_child, [(str(tmp_path), settings)] * 2)
    assert paths[0] == paths[1]
    out = Path(paths[0])
    assert (out / sp.COMPLETE_MARKER).is_file() and len(list(out.glob("images/*/*.jpg"))) == 4
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_default_cache_root(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("FGKD_CACHE", str(tmp_path / "c"))
    assert sp.default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("FGKD_CACHE")
    monkeypatch.delenv("FGKD_OUTPUTS", raising=False)
    monkeypatch.delenv("FGKD_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # outputs follow the working directory, never the installed package
    assert sp.default_cache_root() == tmp_path / "outputs" / "cache"
    monkeypatch.setenv("FGKD_OUTPUTS", str(tmp_path / "o"))
    assert sp.default_cache_root() == tmp_path / "o" / "cache"


def test_cli_writes_dataset(tmp_path: Path, capsys):
    out = tmp_path / "cli"
    assert sp.main(["--out", str(out), "--num-images", "3", "--seed", "2", "--max-side", "64", "--quiet"]) == 0
    cfg = yaml.safe_load((out / "data.yaml").read_text())
    assert cfg["generator"]["num_images"] == 3 and cfg["generator"]["max_side"] == 64
    assert len(list(out.glob("images/*/*.jpg"))) == 3
    with pytest.raises(SystemExit):
        sp.main(["--out", str(out), "--num-images", "3", "--quiet"])  # refuses to overwrite silently
    assert "overwrite" in capsys.readouterr().err


def test_workers_give_the_same_bytes(tmp_path: Path):
    serial = sp.generate(tmp_path / "s", 4, seed=1, max_side=64, progress=False)
    parallel = sp.generate(tmp_path / "p", 4, seed=1, max_side=64, progress=False, workers=2)
    assert _files(serial) == _files(parallel)


def test_paths_helpers_are_consistent(dataset: Path):
    for image_path in sorted(dataset.glob("images/*/*.jpg"))[:3]:
        parts = list(image_path.parts)
        idx = len(parts) - 1 - parts[::-1].index("images")
        label = Path(*parts[:idx], "labels", *parts[idx + 1:]).with_suffix(".txt")
        mask = Path(*parts[:idx], "masks", *parts[idx + 1:]).with_suffix(".png")
        assert label.is_file() and mask.is_file()
    assert os.access(dataset / "meta.jsonl", os.R_OK)
