"""Letterbox geometry (golden numbers) and augmentation: one draw per sample, X / M / X_M stay aligned."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import toydata

from fgkd.data.augment import (
    PAD_VALUE,
    AugmentConfig,
    letterbox,
    to_index_matrix,
    transform_boxes,
    translation,
    warp_sample,
)
from fgkd.data.cache import ResizedImageCache
from fgkd.data.dataset import DetectionDataset
from fgkd.data.formats import index_yolo

NO_AUGMENT = dict(hsv_h=0, hsv_s=0, hsv_v=0, translate=0, scale=0, fliplr=0, mosaic=0)
STRONG = dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=15, translate=0.2, scale=0.4, shear=5, fliplr=0.5)


def _dataset(root, imgsz=64, augment=None, mosaic=None, **kwargs):
    index = index_yolo(root)
    return DetectionDataset(
        index.splits["train"], imgsz, ResizedImageCache(None, imgsz, enabled=False), augment=augment, mosaic=mosaic, **kwargs
    )


# ---------------------------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize(
    ("width", "height", "box", "expected_box", "expected_letterbox"),
    [
        # landscape 100 x 50 -> 64 x 32, centred: pad_y = (64 - 32) / 2 = 16; px * 0.64 (+16 on y)
        (100, 50, (10, 10, 50, 30), (6.4, 22.4, 32.0, 35.2), (0.64, 0.0, 16.0)),
        # portrait 50 x 100 -> 32 x 64: pad_x = 16
        (50, 100, (10, 10, 50, 30), (22.4, 6.4, 48.0, 19.2), (0.64, 16.0, 0.0)),
        # small square 32 x 32 is scaled up x2, no padding
        (32, 32, (4, 8, 12, 16), (8.0, 16.0, 24.0, 32.0), (2.0, 0.0, 0.0)),
    ],
)
def test_letterbox_golden_geometry(tmp_path, width, height, box, expected_box, expected_letterbox):
    sample = toydata.toy_sample("s", "train", width, height, (0, height // 2), [(1, *box)])
    root = toydata.write_yolo(tmp_path / "d", [sample])
    item = _dataset(root)[0]
    np.testing.assert_allclose(item["boxes"], [expected_box], atol=1e-4)
    assert item["classes"].tolist() == [1]
    np.testing.assert_allclose(item["letterbox"], expected_letterbox)
    assert item["orig_shape"] == (height, width)
    scale, pad_x, pad_y = expected_letterbox
    # the contract's mapping: input px = orig px * scale + pad
    np.testing.assert_allclose(np.array(box) * scale + [pad_x, pad_y, pad_x, pad_y], expected_box, atol=1e-4)
    # padding is grey 114 in the image and False in the mask; the mask's top half maps to the content
    image, mask = item["image"], item["mask"]
    new_w, new_h = round(width * scale), round(height * scale)
    px, py = int(pad_x), int(pad_y)
    assert (image[:py] == PAD_VALUE).all() and (image[py + new_h :] == PAD_VALUE).all()
    assert (image[:, :px] == PAD_VALUE).all() and (image[:, px + new_w :] == PAD_VALUE).all()
    assert mask.sum() == new_w * (new_h // 2)
    assert mask[py : py + new_h // 2, px : px + new_w].all()


def test_flip_matrix_maps_boxes_and_pixels_exactly():
    size = 64
    image = np.zeros((size, size, 3), np.uint8)
    image[10:20, 5:15] = 200
    mask = image[..., 0] > 0
    boxes = np.array([[5.0, 10.0, 15.0, 20.0]])
    flip = np.array([[-1.0, 0, size], [0, 1.0, 0], [0, 0, 1.0]])
    out_image, out_mask, out_boxes, keep = warp_sample(
        image, mask, boxes, np.array([100.0]), flip, size, AugmentConfig.from_mapping(NO_AUGMENT)
    )
    np.testing.assert_array_equal(out_image, image[:, ::-1])  # column j -> 63 - j
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    np.testing.assert_allclose(out_boxes, [[49.0, 10.0, 59.0, 20.0]])  # x -> 64 - x
    assert keep.tolist() == [True]


def test_scale_about_centre_golden():
    size = 64
    zoom = translation(32, 32) @ np.diag([0.5, 0.5, 1.0]) @ translation(-32, -32)
    mask = np.zeros((size, size), bool)
    mask[:32] = True  # top half
    image = np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    boxes = np.array([[0.0, 0.0, 64.0, 64.0], [0.0, 0.0, 4.0, 4.0]])
    config = AugmentConfig.from_mapping(NO_AUGMENT)
    out_image, out_mask, out_boxes, keep = warp_sample(image, mask, boxes, np.array([4096.0, 16.0]), zoom, size, config)
    expected = np.zeros((size, size), bool)
    expected[16:32, 16:48] = True
    np.testing.assert_array_equal(out_mask, expected)
    assert (out_image[:16] == PAD_VALUE).all()  # border filled with grey
    np.testing.assert_allclose(out_boxes, [[16.0, 16.0, 48.0, 48.0]])
    assert keep.tolist() == [True, False]  # the 4 px box became 2 px: dropped (min_box_size 2)


def test_rotated_box_is_the_bound_of_its_corners():
    rotate = translation(32, 32) @ np.array([[0.0, -1.0, 0], [1.0, 0.0, 0], [0, 0, 1.0]]) @ translation(-32, -32)
    np.testing.assert_allclose(transform_boxes(np.array([[10.0, 20.0, 30.0, 24.0]]), rotate), [[40.0, 10.0, 44.0, 30.0]])


# ---------------------------------------------------------------------------------------------- one draw


def test_image_mask_and_boxes_share_one_matrix(tmp_path):
    root = toydata.write_yolo(tmp_path / "d")
    augment = {**STRONG, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}
    dataset = _dataset(root, augment=augment, mosaic=0.0)
    config = dataset.augment
    for index in range(len(dataset)):
        for epoch in (0, 1):
            draw = dataset.draw(index, epoch)
            item = dataset[(index, epoch, True)]
            loaded = dataset.load(index)
            image, mask, pad_x, pad_y = letterbox(loaded.image, loaded.mask, 64)
            matrix = to_index_matrix(draw.matrix)[:2]
            np.testing.assert_array_equal(
                item["mask"], cv2.warpAffine(mask.astype(np.uint8), matrix, (64, 64), flags=cv2.INTER_NEAREST) > 0
            )
            np.testing.assert_array_equal(
                item["image"],
                cv2.warpAffine(image, matrix, (64, 64), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3),
            )
            record = dataset.records[index]
            h, w = loaded.image.shape[:2]
            boxes = record.boxes * [w, h, w, h] + [pad_x, pad_y, pad_x, pad_y]
            expected = np.clip(transform_boxes(boxes, draw.matrix), 0, 64)
            kept = [b for b in expected if b[2] - b[0] > config.min_box_size and b[3] - b[1] > config.min_box_size]
            assert len(item["boxes"]) <= len(kept)
            for box in item["boxes"]:
                assert np.abs(np.asarray(kept) - box).max(axis=1).min() < 1e-3


def test_draw_is_deterministic_per_seed_epoch_index(tmp_path):
    root = toydata.write_yolo(tmp_path / "d")
    dataset = _dataset(root, augment=STRONG, mosaic=0.5)
    again = _dataset(root, augment=STRONG, mosaic=0.5)
    for key in [(0, 0, True), (3, 2, True), (1, 5, False)]:
        first, second = dataset[key], again[key]
        np.testing.assert_array_equal(first["image"], second["image"])
        np.testing.assert_array_equal(first["boxes"], second["boxes"])
    assert not np.array_equal(dataset[(0, 0, True)]["image"], dataset[(0, 1, True)]["image"])
    other_seed = _dataset(root, augment=STRONG, mosaic=0.5, seed=1)
    assert not np.array_equal(dataset[(0, 0, True)]["image"], other_seed[(0, 0, True)]["image"])


def test_hsv_changes_the_image_only(tmp_path):
    root = toydata.write_yolo(tmp_path / "d")
    geometric = {**STRONG, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}
    plain = _dataset(root, augment=geometric, mosaic=1.0)
    coloured = _dataset(root, augment={**geometric, "hsv_s": 0.9, "hsv_v": 0.9}, mosaic=1.0)
    changed = 0
    for key in [(i, e, True) for i in range(4) for e in range(2)]:
        a, b = plain[key], coloured[key]
        np.testing.assert_array_equal(a["mask"], b["mask"])  # same draw: HSV gains are drawn last
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        changed += not np.array_equal(a["image"], b["image"])
    assert changed >= 6


# ---------------------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("mixup", [0.0, 0.5])
def test_views_stay_aligned_under_flip_affine_hsv_mosaic(tmp_path, mixup):
    """Foreground pixels are green, background black, padding grey: after any augmentation the mask must
    be exactly where the image is green (except a 2 px band at mask edges and at the frame, where bilinear
    blending of the image and nearest sampling of the mask may differ), and X_M = preprocess.apply(X, M)."""
    preprocess = pytest.importorskip("fgkd.preprocess")
    root = toydata.write_yolo(tmp_path / "d")
    dataset = _dataset(root, augment={**STRONG, "mixup": mixup}, mosaic=1.0, preprocess="rb")
    kernel = np.ones((3, 3), np.uint8)
    mosaics = flips = 0
    for index in range(len(dataset)):
        for epoch in range(3):
            draw = dataset.draw(index, epoch)
            mosaics += draw.is_mosaic
            flips += draw.flip_lr
            item = dataset[(index, epoch, True)]
            image, mask = item["image"].astype(int), item["mask"]
            green = image[..., 1] - np.maximum(image[..., 0], image[..., 2]) > 8
            as_uint8 = mask.astype(np.uint8)
            band = cv2.dilate(as_uint8, kernel, iterations=2).astype(bool) & ~cv2.erode(as_uint8, kernel, iterations=2).astype(bool)
            interior = ~band
            interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False  # mask edge may lie just outside
            np.testing.assert_array_equal(green[interior], mask[interior])
            assert mask.any()
            # teacher view: RB removes the background -> 0 off the mask, X on it; and it is apply() of (X, M)
            np.testing.assert_array_equal(item["teacher_image"], preprocess.apply(item["image"], mask, "rb"))
            assert (item["teacher_image"][~mask] == 0).all()
            np.testing.assert_array_equal(item["teacher_image"][mask], item["image"][mask])
    assert mosaics == len(dataset) * 3 and flips > 0


def test_boxes_follow_the_content(tmp_path):
    """Each box is painted red in the source: after mosaic/flip/scale/translate every output box is
    mostly red and every clearly red pixel lies in some box."""
    samples = []
    for number, (width, height) in enumerate([(96, 64), (64, 96), (80, 80), (128, 64)]):
        boxes = [(0, 8, 8, 28, 24), (1, width - 30, height - 26, width - 6, height - 8)]
        sample = toydata.toy_sample(f"s{number}", "train", width, height, (0, 4), boxes)
        for _, x1, y1, x2, y2 in boxes:
            sample.image[y1:y2, x1:x2] = (255, 0, 0)
        samples.append(sample)
    root = toydata.write_yolo(tmp_path / "d", samples)
    dataset = _dataset(root, augment={**STRONG, "degrees": 0, "shear": 0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}, mosaic=0.7)
    for index in range(4):
        for epoch in range(3):
            item = dataset[(index, epoch, True)]
            image = item["image"].astype(int)
            red = (image[..., 0] > 150) & (image[..., 1] < 60)
            covered = np.zeros_like(red)
            for x1, y1, x2, y2 in item["boxes"]:
                inside = red[int(np.ceil(y1)) : int(y2), int(np.ceil(x1)) : int(x2)]
                assert inside.size == 0 or inside.mean() > 0.7
                covered[max(0, int(y1) - 1) : int(np.ceil(y2)) + 1, max(0, int(x1) - 1) : int(np.ceil(x2)) + 1] = True
            # red pixels outside every box come only from boxes that were dropped as too cut off
            assert (red & ~covered).sum() <= 0.1 * max(1, red.sum()) + 20


def test_augment_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rotate'\]"):
        AugmentConfig.from_mapping({"rotate": 10})
    with pytest.raises(ValueError, match="fliplr"):
        AugmentConfig.from_mapping({"fliplr": 2})
