"""Dataset indexing and decoding: YOLO vs COCO equivalence, bad-input policies, odd image files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from helpers import toydata

from fgkd.data import imageio
from fgkd.data.cache import load_source
from fgkd.data.formats import DataError, index_coco, index_yolo, parse_yolo_labels
from fgkd.data.imageio import BadImageError

COCO_ANNS = {"train": "annotations/instances_train.json", "val": "annotations/instances_val.json"}


@pytest.fixture
def yolo_root(tmp_path):
    return toydata.write_yolo(tmp_path / "yolo")


def _write_jpeg(path, height=64, width=64, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return path


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("mask_mode", ["png", "polygons", "rle"])
def test_yolo_and_coco_give_the_same_boxes_classes_and_masks(tmp_path, mask_mode):
    yolo = index_yolo(toydata.write_yolo(tmp_path / "yolo"))
    kwargs = {} if mask_mode == "png" else {"mask_category": "pipe", "mask_as_rle": mask_mode == "rle"}
    coco_root = toydata.write_coco(tmp_path / "coco", **kwargs)
    coco = index_coco(coco_root, COCO_ANNS, mask_category=kwargs.get("mask_category"))
    assert yolo.class_names == coco.class_names == list(toydata.TOY_NAMES)  # the mask category is no class
    samples = {(s.split, s.stem): s for s in toydata.default_samples()}
    for split in ("train", "val"):
        assert [r.image.stem for r in yolo.splits[split]] == [r.image.stem for r in coco.splits[split]]
        for y_record, c_record in zip(yolo.splits[split], coco.splits[split], strict=True):
            sample = samples[(split, y_record.image.stem)]
            height, width = sample.image.shape[:2]
            expected = np.array([b[1:] for b in sample.boxes], np.float64).reshape(-1, 4) / [width, height, width, height]
            np.testing.assert_allclose(y_record.boxes, expected, atol=1e-6)
            np.testing.assert_allclose(c_record.boxes, expected, atol=1e-6)
            assert y_record.classes.tolist() == c_record.classes.tolist() == [b[0] for b in sample.boxes]
            # masks at full size (imgsz = long side: no resize) equal the drawn band exactly
            size = max(height, width)
            np.testing.assert_array_equal(load_source(y_record, size).mask, sample.mask)
            np.testing.assert_array_equal(load_source(c_record, size).mask, sample.mask)


def test_coco_category_ids_map_to_contiguous_sorted_order(tmp_path):
    # ids 30, 5, 12 for corrosion, damaged_insulation, dent -> sorted 5, 12, 30 -> 0, 1, 2
    root = toydata.write_coco(tmp_path / "coco", category_ids=[30, 5, 12])
    index = index_coco(root, COCO_ANNS)
    assert index.class_names == ["damaged_insulation", "dent", "corrosion"]
    first = index.splits["train"][0]  # sample a: boxes of toy classes 0 (corrosion) and 2 (dent)
    assert first.classes.tolist() == [2, 1]


def test_coco_unknown_category_names_the_annotation(tmp_path):
    root = toydata.write_coco(tmp_path / "coco")
    path = root / COCO_ANNS["train"]
    content = json.loads(path.read_text())
    content["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"instances_train\.json: annotation id 1 .*unknown category_id 999"):
        index_coco(root, COCO_ANNS)


def test_coco_mask_category_must_exist(tmp_path):
    root = toydata.write_coco(tmp_path / "coco")
    with pytest.raises(DataError, match="mask_category='pipe' is not a category"):
        index_coco(root, COCO_ANNS, mask_category="pipe")


def test_split_given_as_txt_list(yolo_root):
    (yolo_root / "train.txt").write_text("images/train/a.png\n./images/train/c.png\n")
    index = index_yolo(yolo_root, splits={"train": "train.txt"})
    assert [r.image.name for r in index.splits["train"]] == ["a.png", "c.png"]


# ---------------------------------------------------------------------------------------------- bad input


def test_truncated_jpeg_is_an_error_naming_the_file_or_skipped(yolo_root):
    bad = _write_jpeg(yolo_root / "images" / "train" / "broken.jpg")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    (yolo_root / "masks" / "train" / "broken.png").write_bytes((yolo_root / "masks" / "train" / "a.png").read_bytes())
    with pytest.raises(DataError, match=r"broken\.jpg: truncated JPEG"):
        index_yolo(yolo_root)
    index = index_yolo(yolo_root, skip_bad=True)
    assert index.stats["train"].skipped == 1 and index.stats["train"].images == 4
    assert index.stats["train"].skipped_files == [str(bad)]
    with pytest.raises(BadImageError, match=r"broken\.jpg"):  # the load-time check too
        imageio.read_image(bad)


def test_missing_label_file_means_no_objects(yolo_root):
    (yolo_root / "labels" / "train" / "a.txt").unlink()
    index = index_yolo(yolo_root)
    record = next(r for r in index.splits["train"] if r.image.stem == "a")
    assert record.boxes.shape == (0, 4) and record.classes.shape == (0,)
    assert index.stats["train"].missing_labels == 1


def test_missing_mask_policies(yolo_root):
    (yolo_root / "masks" / "train" / "a.png").unlink()
    (yolo_root / "masks" / "train" / "b.png").unlink()
    with pytest.raises(DataError, match=r"2 image\(s\) without a foreground mask") as error:
        index_yolo(yolo_root)  # default policy: error, listing every file
    assert "a.png" in str(error.value) and "b.png" in str(error.value) and "missing_mask=full" in str(error.value)
    for policy, expected in (("full", True), ("empty", False)):
        index = index_yolo(yolo_root, missing_mask=policy)
        assert index.stats["train"].missing_masks == 2
        record = next(r for r in index.splits["train"] if r.image.stem == "a")
        loaded = load_source(record, 64)
        assert loaded.mask.shape == loaded.image.shape[:2] and (loaded.mask == expected).all()


def test_boxes_outside_are_clipped_and_degenerate_dropped(yolo_root):
    # image a is 96 x 64. Line 1 sticks out left (x1 = -0.1); line 2 is fully outside; line 3 has zero width.
    (yolo_root / "labels" / "train" / "a.txt").write_text("0 0.1 0.5 0.4 0.2\n1 1.5 0.5 0.2 0.2\n2 0.5 0.5 0 0.2\n")
    index = index_yolo(yolo_root)
    record = next(r for r in index.splits["train"] if r.image.stem == "a")
    np.testing.assert_allclose(record.boxes, [[0.0, 0.4, 0.3, 0.6]], atol=1e-6)
    assert record.classes.tolist() == [0]
    assert index.stats["train"].clipped == 1 and index.stats["train"].dropped == 2


def test_unknown_class_is_an_error_with_file_and_line(yolo_root):
    label = yolo_root / "labels" / "train" / "b.txt"
    label.write_text("1 0.5 0.5 0.2 0.2\n\n3 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=rf"{label}:3: unknown class id 3"):
        index_yolo(yolo_root)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "expected 5 values"),
        ("0 0.5 zero 0.2 0.2", "non-numeric"),
        ("0.5 0.5 0.5 0.2 0.2", "not an integer"),
        ("0 48 32 10 10", "not normalised"),
        ("0 nan 0.5 0.2 0.2", "non-finite"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    label = tmp_path / "x.txt"
    label.write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(DataError, match=rf"{label}:2: .*{message}"):
        parse_yolo_labels(label, 3)


# ---------------------------------------------------------------------------------------------- decoding


def test_16bit_gray_and_colour_scale_to_uint8_rgb(tmp_path):
    gray16 = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) % 256).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    image = imageio.read_image(tmp_path / "g16.png")
    assert image.dtype == np.uint8 and image.shape == (32, 64, 3)
    np.testing.assert_array_equal(image[..., 0], gray16 // 257)  # full-range scaling: 65535 -> 255
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    bgr16 = np.zeros((8, 12, 3), np.uint16)
    bgr16[..., 2] = 65535  # red in OpenCV's BGR order
    bgr16[..., 1] = 257 * 100
    cv2.imwrite(str(tmp_path / "c16.png"), bgr16)
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "c16.png")[0, 0], [255, 100, 0])


def test_gray8_and_rgba_become_rgb(tmp_path):
    gray = np.full((10, 20), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "g.png"), np.full((10, 20, 3), 77, np.uint8))
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 30, 20, 10, 0  # fully transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    image = imageio.read_image(tmp_path / "rgba.png")
    assert image.shape == (10, 12, 3) and image[0, 0].tolist() == [10, 20, 30]  # alpha dropped, RGB order


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    raw = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide x 20 high, left 10 columns white
    raw[:, :10] = 255
    pil = Image.fromarray(raw)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    pil.save(path, exif=exif.tobytes(), quality=95)
    image = imageio.read_image(path)
    assert image.shape == (40, 20, 3)  # displayed 20 wide x 40 high
    assert image[:8].mean() > 240 and image[12:].mean() < 15  # the white band is now on top
    assert imageio.probe_size(path) == (40, 20)  # the header probe agrees with the decoder


def test_mask_size_mismatch_is_resized_nearest_and_counted(yolo_root):
    # image a is 96 x 64; replace its mask by a half-resolution 0/1 mask (PDI tooling writes 0/1 masks)
    small = np.zeros((32, 48), np.uint8)
    small[10:20, 5:30] = 1
    cv2.imwrite(str(yolo_root / "masks" / "train" / "a.png"), small)
    index = index_yolo(yolo_root)
    assert index.stats["train"].resized_masks == 1
    record = next(r for r in index.splits["train"] if r.image.stem == "a")
    loaded = load_source(record, 96)  # long side 96: the image keeps its size
    assert loaded.mask_resized and loaded.mask.shape == (64, 96)
    expected = np.zeros((64, 96), bool)
    expected[20:40, 10:60] = True  # nearest x2: every pixel doubled, still binary
    np.testing.assert_array_equal(loaded.mask, expected)


def test_mask_threshold(tmp_path):
    mask = np.array([[0, 1, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    assert imageio.read_mask(tmp_path / "m.png", threshold=0).tolist() == [[False, True, True, True]]
    assert imageio.read_mask(tmp_path / "m.png", threshold=127).tolist() == [[False, False, True, True]]
    # auto (the default): half range, so 0/255 noise below 128 stays background, while a 0/1 mask still works
    assert imageio.read_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
    cv2.imwrite(str(tmp_path / "binary.png"), np.array([[0, 1, 1, 0]], np.uint8))
    assert imageio.read_mask(tmp_path / "binary.png").tolist() == [[False, True, True, False]]
    cv2.imwrite(str(tmp_path / "deep.png"), np.array([[0, 30000, 40000, 65535]], np.uint16))
    assert imageio.read_mask(tmp_path / "deep.png").tolist() == [[False, False, True, True]]


def test_a_noisy_jpeg_mask_is_not_read_as_all_foreground(tmp_path):
    """Issue 15.8: a JPEG-compressed 0/255 mask read as `> 0` was nearly all foreground (IoU 0.23)."""
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), np.uint8)
    truth[16:48, 8:40] = 255
    noisy = np.clip(truth.astype(int) + rng.integers(0, 30, truth.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "m.jpg"), noisy, [cv2.IMWRITE_JPEG_QUALITY, 70])
    mask = imageio.read_mask(tmp_path / "m.jpg")
    iou = (mask & (truth > 0)).sum() / (mask | (truth > 0)).sum()
    assert iou > 0.95


def test_large_jpeg_is_decoded_reduced_with_true_size_and_orientation(tmp_path):
    from PIL import Image

    raw = np.zeros((512, 1024, 3), np.uint8)  # stored 1024 x 512; left quarter white; displayed rotated 90 CW
    raw[:, :256] = 255
    pil = Image.fromarray(raw)
    exif = pil.getexif()
    exif[0x0112] = 6
    root = tmp_path / "d"
    (root / "images" / "train").mkdir(parents=True)
    pil.save(root / "images" / "train" / "big.jpg", exif=exif.tobytes(), quality=90)
    (root / "data.yaml").write_text("names: [a]\ntrain: images/train\n")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "big.txt").write_text("0 0.5 0.125 0.5 0.25\n")  # the white band, displayed
    record = index_yolo(root, missing_mask="full").splits["train"][0]
    assert record.size == (1024, 512) and imageio.jpeg_reduction(record.size, 64) == 8
    loaded = load_source(record, 64)
    assert loaded.orig_shape == (1024, 512)  # the true (oriented) size, not the 1/8 decode
    assert loaded.image.shape == (64, 32, 3)
    assert loaded.image[:15].mean() > 240 and loaded.image[17:].mean() < 10  # band on top, rows 0..15
    full = cv2.resize(imageio.read_image(record.image), (32, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(full.astype(int) - loaded.image.astype(int)).mean() < 3


def test_duplicate_boxes_are_dropped_and_counted_and_duplicate_coco_ids_refused(tmp_path):
    """Issue 15.10: a repeated label line counted as a second object; two COCO images with one id both got
    every annotation of that id."""
    root = toydata.write_yolo(tmp_path / "yolo")
    label = sorted((root / "labels" / "train").glob("*.txt"))[0]
    lines = label.read_text().splitlines()
    label.write_text("\n".join([lines[0], *lines, lines[0]]) + "\n")  # the first box three times
    plain = index_yolo(toydata.write_yolo(tmp_path / "plain"))
    index = index_yolo(root)
    assert index.stats["train"].duplicates == 2
    assert index.stats["train"].boxes == plain.stats["train"].boxes
    record = next(r for r in index.splits["train"] if r.image.stem == label.stem)
    reference = next(r for r in plain.splits["train"] if r.image.stem == label.stem)
    np.testing.assert_array_equal(record.boxes, reference.boxes)

    coco = toydata.write_coco(tmp_path / "coco")
    path = coco / COCO_ANNS["train"]
    content = json.loads(path.read_text())
    content["images"][1]["id"] = content["images"][0]["id"]
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"instances_train\.json: image ids \[\d+\] appear more than once"):
        index_coco(coco, COCO_ANNS)


def test_a_jpeg_with_corrupt_entropy_data_is_a_bad_image(tmp_path):
    """Issue 15.11: OpenCV decoded it with a libjpeg warning on stderr only, a silently damaged sample."""
    rng = np.random.default_rng(0)
    image = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    data = bytearray(encoded.tobytes())
    for i in range(len(data) // 2, len(data) // 2 + 40):  # scramble the middle of the scan, keep the end marker
        data[i] = 0xFF if i % 7 == 0 else data[i] ^ 0x5A
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    (tmp_path / "good.jpg").write_bytes(encoded.tobytes())
    assert cv2.imread(str(tmp_path / "bad.jpg")) is not None  # what OpenCV alone accepts
    with pytest.raises(BadImageError, match="corrupt JPEG data"):
        imageio.read_image(tmp_path / "bad.jpg")
    assert imageio.read_image(tmp_path / "good.jpg").shape == (128, 128, 3)
    assert imageio.read_image(tmp_path / "good.jpg", reduction=2).shape == (64, 64, 3)
