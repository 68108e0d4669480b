"""MVTec AD and BTAD layouts read into one in-memory index, on tiny trees built here, with the bad inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fgkd.data.formats.btad import index_btad
from fgkd.data.formats.common import DataError
from fgkd.data.formats.mvtec import index_mvtec, list_categories
from fgkd.data.imageio import BadImageError


def _image(path: Path, size=(16, 16), value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), value, np.uint8))
    return path


def _mask(path: Path, size=(16, 16), on=True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(size, np.uint8)
    if on:
        mask[4:8, 4:8] = 255
    cv2.imwrite(str(path), mask)
    return path


def _mvtec(root: Path, category="bottle") -> Path:
    cat = root / category
    for i in range(3):
        _image(cat / "train" / "good" / f"{i:03d}.png")
    _image(cat / "test" / "good" / "000.png")
    for defect in ("broken_large", "contamination"):
        _image(cat / "test" / defect / "000.png")
        _mask(cat / "ground_truth" / defect / "000_mask.png")
    return root


def test_mvtec_index_labels_from_folders_and_masks_by_name(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    _image(root / "bottle" / "test" / "contamination" / "001.png")
    _mask(root / "bottle" / "ground_truth" / "contamination" / "001_mask.png", on=False)  # empty, still defective
    index = index_mvtec(root, "bottle")
    assert list_categories(root) == ["bottle"]
    assert len(index.train) == 3 and all(s.label == 0 and s.mask is None for s in index.train)
    labels = {(s.defect, s.image.name): (s.label, s.mask.name if s.mask else None) for s in index.test}
    assert labels == {("good", "000.png"): (0, None), ("broken_large", "000.png"): (1, "000_mask.png"),
                      ("contamination", "000.png"): (1, "000_mask.png"),
                      ("contamination", "001.png"): (1, "001_mask.png")}
    assert index.counts["empty_defect_masks"] == 1 and "3 defective" in index.summary()


def test_btad_index_with_bmp_masks_for_category_03(tmp_path):
    root = tmp_path / "btad"
    for category, suffix in (("01", ".png"), ("03", ".bmp")):
        cat = root / category
        _image(cat / "train" / "ok" / f"0000{suffix}")
        _image(cat / "test" / "ok" / f"0001{suffix}")
        _image(cat / "test" / "ko" / f"0002{suffix}")
        _mask(cat / "ground_truth" / "ko" / f"0002{suffix}")
    for category, suffix in (("01", ".png"), ("03", ".bmp")):
        index = index_btad(root, category)
        (defective,) = [s for s in index.test if s.label]
        assert defective.defect == "ko" and defective.mask.suffix == suffix
        assert [s.label for s in index.test] == [1, 0]  # ko sorts before ok


def test_bad_inputs_name_the_path_and_the_fix(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    with pytest.raises(DataError, match=r"no such category folder.*bottle"):
        index_mvtec(root, "cable")
    (root / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/good: missing"):
        index_mvtec(root, "empty")
    (root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"000.png: defective test image without its mask"):
        index_mvtec(root, "bottle")
    _mask(root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png", size=(8, 8))
    with pytest.raises(DataError, match=r"mask is 8x8 but its image 000.png is 16x16"):
        index_mvtec(root, "bottle")
    _mask(root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png")
    (root / "bottle" / "train" / "good" / "009.png").write_bytes(b"not a png")
    with pytest.raises(BadImageError, match=r"009.png"):
        index_mvtec(root, "bottle")
    index = index_mvtec(root, "bottle", skip_bad=True)
    assert index.counts["unreadable_skipped"] == 1 and len(index.train) == 3
    for image in (root / "bottle" / "test").rglob("*.png"):
        image.unlink()
    with pytest.raises(DataError, match=r"no test images for category 'bottle'"):
        index_mvtec(root, "bottle", skip_bad=True)
