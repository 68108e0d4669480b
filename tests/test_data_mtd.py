"""The MTD layout (public and seeded splits, folder labels, empty masks, sizes), the resize modes, and the
SynthTiles generator read back by the MTD loader — on tiny trees made here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fgkd.data.anomaly_datamodule import AnomalyDataModule, fit_square, load_mask, unfit_square
from fgkd.data.formats.common import DataError
from fgkd.data.formats.mtd import PUBLIC_TRAIN_LIST, PUBLIC_TRAIN_SHA256, index_mtd, read_names


def _pair(root: Path, cls: str, stem: str, size=(24, 40), mask_on=True) -> None:
    folder = root / cls / "Imgs"
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{stem}.jpg"), np.full(size, 120, np.uint8))
    mask = np.zeros(size, np.uint8)
    if mask_on and cls != "MT_Free":
        mask[5:10, 5:12] = 255
        mask[10, 5:12] = 100  # anti-aliased edge: not defect at > 127
    cv2.imwrite(str(folder / f"{stem}.png"), mask)


def tiny_mtd(root: Path, n_free: int = 6) -> Path:
    for i in range(n_free):
        _pair(root, "MT_Free", f"exp1_num_{i}")
    _pair(root, "MT_Crack", "exp2_num_1")
    _pair(root, "MT_Uneven", "exp3_num_2", mask_on=False)  # as MTD's 4 all-zero MT_Uneven masks
    _pair(root, "MT_Blowhole", "exp4_num_3", size=(30, 18))
    return root


def test_the_packaged_public_list_is_differnets():
    assert hashlib.sha256(PUBLIC_TRAIN_LIST.read_bytes()).hexdigest() == PUBLIC_TRAIN_SHA256
    names = read_names(PUBLIC_TRAIN_LIST)
    assert len(names) == len(set(names)) == 761 and all(n.endswith(".jpg") for n in names)


def test_public_split_from_a_list_labels_from_folders_and_empty_masks_counted(tmp_path):
    root = tiny_mtd(tmp_path / "mtd")
    (tmp_path / "train.txt").write_text("exp1_num_0.jpg\nexp1_num_2.jpg\n\nexp1_num_4.jpg\n")
    index = index_mtd(root, train_list=tmp_path / "train.txt")
    assert sorted(s.image.name for s in index.train) == ["exp1_num_0.jpg", "exp1_num_2.jpg", "exp1_num_4.jpg"]
    test = {s.image.name: s for s in index.test}
    assert sorted(test) == ["exp1_num_1.jpg", "exp1_num_3.jpg", "exp1_num_5.jpg", "exp2_num_1.jpg", "exp3_num_2.jpg",
                            "exp4_num_3.jpg"]
    assert test["exp3_num_2.jpg"].label == 1 and test["exp3_num_2.jpg"].defect == "MT_Uneven"  # empty mask: defective
    assert test["exp1_num_1.jpg"].label == 0 and test["exp1_num_1.jpg"].mask is None
    assert test["exp2_num_1.jpg"].mask == root / "MT_Crack" / "Imgs" / "exp2_num_1.png"
    assert index.counts["empty_defect_masks"] == 1
    assert not any(s.image.suffix == ".png" for s in index.train + index.test)  # masks are not images

    # the packaged public list names images this tree does not have: a clear error and the ways out
    with pytest.raises(DataError, match=r"761 of the 761 training names .* data.split=seeded"):
        index_mtd(root)


def test_seeded_split_is_reproducible_and_disjoint(tmp_path):
    root = tiny_mtd(tmp_path / "mtd", n_free=10)
    a = index_mtd(root, split="seeded", train_fraction=0.7, seed=3)
    b = index_mtd(root, split="seeded", train_fraction=0.7, seed=3)
    c = index_mtd(root, split="seeded", train_fraction=0.7, seed=4)
    names = lambda idx, part: {s.image.name for s in getattr(idx, part)}  # noqa: E731
    assert names(a, "train") == names(b, "train") and len(names(a, "train")) == 7
    assert names(a, "train") != names(c, "train")
    free_test = {s.image.name for s in a.test if s.label == 0}
    assert free_test.isdisjoint(names(a, "train")) and len(free_test) == 3
    with pytest.raises(DataError, match="train_fraction"):
        index_mtd(root, split="seeded", train_fraction=1.0)
    with pytest.raises(DataError, match="data.split='random'"):
        index_mtd(root, split="random")


def test_bad_trees_name_the_folder_and_mismatched_masks_are_refused(tmp_path):
    with pytest.raises(DataError, match="no MT_Free/Imgs folder"):
        index_mtd(tmp_path)
    root = tmp_path / "mtd"
    for i in range(3):
        _pair(root, "MT_Free", f"f{i}")
    with pytest.raises(DataError, match="no defective images"):
        index_mtd(root, split="seeded")
    _pair(root, "MT_Break", "b0")
    cv2.imwrite(str(root / "MT_Break" / "Imgs" / "b0.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="mask is 8x8 but its image b0.jpg is 40x24"):
        index_mtd(root, split="seeded")
    (root / "MT_Break" / "Imgs" / "b0.png").unlink()
    with pytest.raises(DataError, match="defective test image without its mask"):
        index_mtd(root, split="seeded")
    with pytest.raises(DataError, match="one category, 'mtd'"):
        index_mtd(root, "tiles", split="seeded")


def test_resize_modes_keep_the_geometry_of_image_and_mask():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 200  # left half bright
    sq = fit_square(image, 16, "square")
    assert sq.shape == (16, 16, 3) and sq[:, :7].min() == 200 and sq[:, 9:].max() == 0
    lb = fit_square(image, 16, "letterbox", (1, 2, 3))
    assert lb.shape == (16, 16, 3)
    assert (lb[:4] == (1, 2, 3)).all() and (lb[12:] == (1, 2, 3)).all()  # 40x20 -> 16x8 centred: 4 rows of padding
    assert lb[4:12, :7].min() == 200 and lb[4:12, 9:].max() == 0
    sc = fit_square(image, 16, "shortcrop")
    assert sc.shape == (16, 16, 3) and sc[:, :7].min() == 200 and sc[:, 9:].max() == 0  # 20x40 -> 16x32, centre 16
    with pytest.raises(DataError, match="data.resize_mode='stretch'"):
        fit_square(image, 16, "stretch")

    amap = np.arange(16 * 16, dtype=np.float32).reshape(16, 16)
    for mode in ("square", "letterbox", "shortcrop"):
        back = unfit_square(amap, (20, 40), mode)
        assert back.shape == (20, 40)
    # letterbox: the map's valid rows come back over the whole image
    back = unfit_square(amap, (20, 40), "letterbox")
    assert back.min() >= amap[4:12].min() and back.max() <= amap[4:12].max()


def test_masks_follow_the_resize_mode(tmp_path):
    mask = np.zeros((20, 40), np.uint8)
    mask[:, 30:] = 255  # the right quarter
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    sq = load_mask(tmp_path / "m.png", 16, mode="square")
    lb = load_mask(tmp_path / "m.png", 16, mode="letterbox")
    sc = load_mask(tmp_path / "m.png", 16, mode="shortcrop")
    assert sq[:, 13:].all() and not sq[:, :11].any()
    assert lb[:4].sum() == 0 and lb[4:12, 13:].all()
    assert not sc.any()  # 40x20 -> 32x16, the centre crop keeps columns 8..24: the right quarter (24..32) is cut off
    mask[:] = 0
    mask[:, 15:25] = 255  # the centre quarter -> resized 12..20 -> crop columns 4..12
    cv2.imwrite(str(tmp_path / "c.png"), mask)
    sc = load_mask(tmp_path / "c.png", 16, mode="shortcrop")
    assert sc[:, 5:11].all() and not sc[:, :3].any() and not sc[:, 13:].any()


def test_synthtiles_generate_the_mtd_layout_and_load_through_the_mtd_loader(tmp_path):
    settings = {"height": 48, "num_train": 6, "num_test_free": 3, "num_test_per_defect": 2, "seed": 1}
    dm = AnomalyDataModule("synthtiles", category="mtd", imgsz=32, num_workers=0, cache_root=str(tmp_path),
                           synthtiles=settings, resize_mode="letterbox")
    root = dm.root()
    assert dm.root() == root and (root / "mtd_train_filenames.txt").is_file()
    dm.setup()
    index = dm.index
    assert len(index.train) == 6 and sum(s.label == 0 for s in index.test) == 3
    assert sorted({s.defect for s in index.test if s.label}) == ["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray",
                                                                  "MT_Uneven"]
    assert index.counts["empty_defect_masks"] == 1  # the first MT_Uneven, as in MTD
    sizes = {cv2.imread(str(s.image), cv2.IMREAD_UNCHANGED).shape for s in index.train + index.test}
    assert all(len(s) == 2 for s in sizes)  # 8-bit gray, like MTD
    ratios = [w / h for h, w in sizes]
    assert min(ratios) < 0.8 and max(ratios) > 1.25  # aspect ratios vary
    masks = [cv2.imread(str(s.mask), cv2.IMREAD_GRAYSCALE) for s in index.test if s.label]
    assert any(((m > 0) & (m < 255)).any() for m in masks)  # anti-aliased, thresholded at > 127
    item = dm.test_set[len(dm.test_set) - 1]
    assert item["images"].shape == (3, 32, 32) and item["labels"] == 1 and item["masks"].dtype == torch.uint8
    # seeded and repeatable: a second generation into another cache writes the same pixels
    other = AnomalyDataModule("synthtiles", category="mtd", imgsz=32, num_workers=0,
                              cache_root=str(tmp_path / "again"), synthtiles=settings).root()
    first = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert first == sorted(p.relative_to(other) for p in other.rglob("*.png"))
    for rel in first[:5]:
        assert (cv2.imread(str(root / rel), cv2.IMREAD_UNCHANGED) == cv2.imread(str(other / rel), cv2.IMREAD_UNCHANGED)).all()
