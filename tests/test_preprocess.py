"""Tests for fgkd.preprocess: hand-computed goldens per transform, Eq. 2-4 composition, the torch twin,
validation, the Hydra group files and the Fig. 4 grid CLI."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fgkd import preprocess as pp
from fgkd.options import BG_TRANSFORMS, FG_TRANSFORMS
from fgkd.preprocess import COMBOS, DEFAULT_PARAMS, apply, apply_torch, from_config

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "preprocess"


def gray(values) -> np.ndarray:
    """(H, W) ints -> (H, W, 3) uint8 with R = G = B (so Y = value exactly)."""
    v = np.asarray(values, dtype=np.uint8)
    return np.repeat(v[..., None], 3, axis=2)


def random_sample(h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 4 : 3 * h // 4, :] = True  # a horizontal "pipe" band
    mask[rng.random((h, w)) < 0.1] ^= True  # ragged edges
    return image, mask


ALL = np.ones((5, 5), bool)
NONE = np.zeros((5, 5), bool)


# ----------------------------------------------------------------------------- combos table
def test_combos_table_and_fig4_order():
    assert set(COMBOS) == {"none", "rb", "bb", "sf", "ef", "rb_sf", "rb_ef", "bb_sf", "bb_ef"}
    for name, (bg, fg) in COMBOS.items():
        assert bg in BG_TRANSFORMS and fg in FG_TRANSFORMS
        parts = {"rb": "remove", "bb": "blur", "sf": "sharpen", "ef": "equalize"}
        expected = {parts[p] for p in name.split("_") if p in parts}
        assert {t for t in (bg, fg) if t != "identity"} == expected
    assert [pp.COMBO_LABELS[c] for c in pp.FIG4_ORDER] == [
        "Original", "RB", "BB", "SF", "RB&SF", "BB&SF", "EF", "RB&EF", "BB&EF",
    ]


# ----------------------------------------------------------------------------- remove background
def test_remove_background_zeros_exactly_the_background():
    image, mask = random_sample()
    image[image == 0] = 1  # so a zero can only come from removal
    out = apply(image, mask, "rb")
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.all(out[~mask] == 0)
    np.testing.assert_array_equal(out[mask], image[mask])


# ----------------------------------------------------------------------------- blur background
def test_blur_sigma0_ksize3_uses_1_2_1_kernel_hand_values():
    # OpenCV's ksize-3 kernel for sigma 0 is [1/4, 1/2, 1/4]; impulse 255 at the centre.
    img = np.zeros((5, 5), np.uint8)
    img[2, 2] = 255
    out = apply(gray(img), NONE, "bb", blur_kernel=3, blur_sigma=0)[..., 0]
    assert out[2, 2] == 64  # 255/4 = 63.75
    assert out[1, 2] == out[2, 1] == out[3, 2] == out[2, 3] == 32  # 255/8 = 31.875
    assert out[1, 1] == 16  # 255/16 = 15.9375
    assert out[0, 0] == 0 and out[0, 2] == 0


def test_blur_border_is_reflect101():
    img = np.zeros((5, 5), np.uint8)
    img[0, 0] = 255
    out = apply(gray(img), NONE, "bb", blur_kernel=3, blur_sigma=0)[..., 0]
    # reflect-101 mirrors around the edge pixel (index -1 -> 1, which is 0 here): 255 * 1/2 * 1/2.
    # (replicate border would give 255 * 3/4 * 3/4 = 143)
    assert out[0, 0] == 64
    assert out[0, 1] == 32  # 255 * 1/2 (rows) * 1/4 (cols) = 31.875


def test_blur_explicit_sigma_matches_gaussian_formula():
    a = math.exp(-0.5)  # ksize 3, sigma 1: weights (a, 1, a) / (1 + 2a)
    w_centre, w_side = 1 / (1 + 2 * a), a / (1 + 2 * a)
    img = np.zeros((5, 5), np.uint8)
    img[2, 2] = 255
    out = apply(gray(img), NONE, "bb", blur_kernel=3, blur_sigma=1.0)[..., 0]
    assert out[2, 2] == round(255 * w_centre**2)  # 52.07 -> 52
    assert out[2, 1] == round(255 * w_centre * w_side)  # 31.58 -> 32
    assert out[1, 1] == round(255 * w_side**2)  # 19.15 -> 19
    np.testing.assert_allclose(pp.gaussian_kernel_1d(3, 1.0), [w_side, w_centre, w_side])


def test_blur_background_is_whole_image_blur_on_background_only():
    image, mask = random_sample()
    out = apply(image, mask, "bb", blur_kernel=5, blur_sigma=1.5)
    whole = cv2.GaussianBlur(image.astype(np.float32), (5, 5), 1.5, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(out[~mask], np.clip(np.rint(whole), 0, 255).astype(np.uint8)[~mask])
    np.testing.assert_array_equal(out[mask], image[mask])


# ----------------------------------------------------------------------------- sharpen foreground
def bump(centre, around=100):
    img = np.full((5, 5), around, np.uint8)
    img[2, 2] = centre
    return gray(img)


def test_sharpen_4_neighbour_hand_values():
    # I - s*Lap(I), Lap = sum(4 neighbours) - 4*centre
    out = apply(bump(120), ALL, "sf", sharpen_strength=1.0, sharpen_kernel=4)[..., 0]
    assert out[2, 2] == 200  # 120 - (400 - 480)
    assert out[1, 2] == out[2, 1] == 80  # 100 - (120 + 300 - 400)
    assert out[1, 1] == 100 and out[0, 0] == 100  # diagonal / far: flat neighbourhood
    half = apply(bump(120), ALL, "sf", sharpen_strength=0.5)[..., 0]
    assert half[2, 2] == 160 and half[1, 2] == 90


def test_sharpen_8_neighbour_and_clipping():
    out = apply(bump(120), ALL, "sf", sharpen_strength=1.0, sharpen_kernel=8)[..., 0]
    assert out[2, 2] == 255  # 120 - (800 - 960) = 280 -> clipped
    assert out[1, 1] == 80  # diagonal now a neighbour: 100 - (120 + 700 - 800)
    low = apply(bump(0), ALL, "sf", sharpen_kernel=4)[..., 0]
    assert low[2, 2] == 0  # 0 - 400 -> clipped
    assert low[1, 2] == 200  # 100 - (0 + 300 - 400)


def test_sharpen_sees_background_neighbours_but_changes_only_foreground():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    out = apply(bump(120), mask, "sf")[..., 0]
    assert out[2, 2] == 200
    assert np.all(out[~mask] == 100)


# ----------------------------------------------------------------------------- equalize foreground
def test_equalize_2x2_foreground_hand_lut():
    img = np.full((4, 4), 200, np.uint8)
    img[1:3, 1:3] = [[10, 10], [20, 30]]
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    for mode in pp.EQUALIZE_MODES:
        out = apply(gray(img), mask, "ef", equalize_mode=mode)
        # N = 4, h(10) = 2, h(20) = 1, h(30) = 1: 255/4 * (2, 3, 4) = 127.5, 191.25, 255
        expected = img.copy()
        expected[1:3, 1:3] = [[128, 128], [191, 255]]  # 127.5 rounds half to even -> 128
        np.testing.assert_array_equal(out, gray(expected), err_msg=mode)


def test_equalize_3x3_foreground_hand_lut():
    img = np.array([[0, 0, 0], [50, 50, 100], [100, 100, 255]], np.uint8)
    out = apply(gray(img), np.ones((3, 3), bool), "ef")[..., 0]
    # N = 9, cdf = 3, 5, 8, 9 -> 255/9 * cdf = 85, 141.67, 226.67, 255
    np.testing.assert_array_equal(out, [[85, 85, 85], [142, 142, 227], [227, 227, 255]])


def test_equalize_lut_is_eq1_not_cv2_equalizehist():
    img = np.array([[10, 10], [20, 30]], np.uint8)
    assert pp._eq1_lut(np.bincount(img.ravel(), minlength=256))[10] == 128
    assert cv2.equalizeHist(img)[0, 0] == 0  # OpenCV subtracts the CDF minimum; Eq. 1 does not


def test_equalize_rounding_half_to_even_and_exact():
    hist = np.zeros(256, np.int64)
    hist[[0, 1]] = [1, 1]  # cdf 1, 2 of N = 2: 127.5 -> 128, 255
    assert list(pp._eq1_lut(hist)[:2]) == [128, 255]
    hist = np.zeros(256, np.int64)
    hist[[0, 1, 2, 3, 4, 5]] = 1  # N = 6: 42.5 -> 42 (even), 85, 127.5 -> 128, 170, 212.5 -> 212, 255
    assert list(pp._eq1_lut(hist)[:6]) == [42, 85, 128, 170, 212, 255]
    assert np.array_equal(pp._eq1_lut(np.zeros(256, np.int64)), np.arange(256))  # empty -> identity


def test_equalize_per_channel_uses_each_channels_foreground_histogram():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0] = [[10, 20], [30, 40]]  # R: 4 distinct -> 64 (63.75), 128 (127.5), 191, 255
    image[..., 1] = [[5, 5], [5, 5]]  # G: one level -> 255
    image[..., 2] = [[7, 7], [9, 9]]  # B: 2+2 -> 128, 255
    out = apply(image, np.ones((2, 2), bool), "ef", equalize_mode="per_channel")
    np.testing.assert_array_equal(out[..., 0], [[64, 128], [191, 255]])
    np.testing.assert_array_equal(out[..., 1], [[255, 255], [255, 255]])
    np.testing.assert_array_equal(out[..., 2], [[128, 128], [255, 255]])


def test_equalize_luminance_shifts_rgb_by_delta_y_keeping_chroma():
    c1, c2 = (120, 60, 30), (30, 90, 150)
    image = np.array([[c1, c1], [c2, c2]], np.uint8)
    y = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[..., 0].astype(int)
    assert y[0, 0] != y[1, 0]
    out = apply(image, np.ones((2, 2), bool), "ef").astype(int)
    # two luma levels, 2 pixels each: the darker -> round(127.5) = 128, the brighter -> 255
    lut = {min(y[0, 0], y[1, 0]): 128, max(y[0, 0], y[1, 0]): 255}
    for r in range(2):
        delta = lut[y[r, 0]] - y[r, 0]
        expected = np.clip(image[r, 0].astype(int) + delta, 0, 255)
        np.testing.assert_array_equal(out[r, 0], expected)
    # where nothing clips, R-G and B-G (hence Cr, Cb and hue) are unchanged
    unclipped = np.all((out > 0) & (out < 255), axis=-1)
    assert unclipped.any()
    diff_in = image.astype(int)[..., [0, 2]] - image.astype(int)[..., [1]]
    diff_out = out[..., [0, 2]] - out[..., [1]]
    np.testing.assert_array_equal(diff_out[unclipped], diff_in[unclipped])


def test_equalize_statistics_come_from_foreground_only():
    image, mask = random_sample(seed=3)
    out_a = apply(image, mask, "ef")
    changed_bg = image.copy()
    changed_bg[~mask] = 255 - changed_bg[~mask]
    out_b = apply(changed_bg, mask, "ef")
    np.testing.assert_array_equal(out_a[mask], out_b[mask])


def test_torch_luma_is_bit_exact_with_opencv():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (200, 500, 3), dtype=np.uint8)
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 0]
    levels = torch.from_numpy(rgb).permute(2, 0, 1)[None].long()
    np.testing.assert_array_equal(pp.luma_levels(levels)[0, 0].numpy(), expected)


# ----------------------------------------------------------------------------- Eq. 2-4 composition
@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_combo_composes_fg_on_mask_and_bg_elsewhere(combo):
    image, mask = random_sample(seed=5)
    params = dict(blur_kernel=7, blur_sigma=2.0)
    bg, fg = COMBOS[combo]
    single = {"identity": "none", "remove": "rb", "blur": "bb", "sharpen": "sf", "equalize": "ef"}
    out = apply(image, mask, combo, **params)
    fg_only = apply(image, mask, single[fg], **params)
    bg_only = apply(image, mask, single[bg], **params)
    np.testing.assert_array_equal(out[mask], fg_only[mask])
    np.testing.assert_array_equal(out[~mask], bg_only[~mask])
    # fg transforms never touch the background and bg transforms never touch the foreground
    np.testing.assert_array_equal(fg_only[~mask], image[~mask])
    np.testing.assert_array_equal(bg_only[mask], image[mask])
    # and each part is the transform of the whole image (the mask only selects)
    if fg == "sharpen":
        np.testing.assert_array_equal(out[mask], apply(image, np.ones_like(mask), "sf")[mask])
    if bg == "blur":
        np.testing.assert_array_equal(out[~mask], apply(image, np.zeros_like(mask), "bb", **params)[~mask])


def test_none_is_identity_and_returns_a_copy():
    image, mask = random_sample()
    out = apply(image, mask, "none")
    np.testing.assert_array_equal(out, image)
    assert out is not image and not np.shares_memory(out, image)


def test_empty_and_full_masks():
    image, _ = random_sample(seed=2)
    empty, full = np.zeros(image.shape[:2], bool), np.ones(image.shape[:2], bool)
    blurred = apply(image, empty, "bb")
    np.testing.assert_array_equal(apply(image, empty, "bb_ef"), blurred)  # fg no-op, bg everywhere
    np.testing.assert_array_equal(apply(image, empty, "rb_sf"), np.zeros_like(image))
    np.testing.assert_array_equal(apply(image, empty, "ef"), image)
    np.testing.assert_array_equal(apply(image, full, "rb"), image)  # bg no-op, fg everywhere
    np.testing.assert_array_equal(apply(image, full, "bb_sf"), apply(image, full, "sf"))
    # full-mask equalize uses the whole image's statistics (gray: Eq. 1 over all pixels)
    g = gray(image[..., 0])
    hist = np.bincount(g[..., 0].ravel(), minlength=256)
    lut = np.rint(255 * np.cumsum(hist) / hist.sum()).astype(np.uint8)
    np.testing.assert_array_equal(apply(g, full, "ef")[..., 0], lut[g[..., 0]])


def test_inputs_are_not_modified():
    image, mask = random_sample()
    image_copy, mask_copy = image.copy(), mask.copy()
    for combo in COMBOS:
        apply(image, mask, combo)
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(mask, mask_copy)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(combo="blur"), r"combo 'blur' is unknown; allowed: none, rb, bb"),
        (dict(combo="rb", blur_size=3), r"unknown preprocess parameter.*blur_size.*allowed: blur_kernel"),
        (dict(combo="bb", blur_kernel=4), r"blur_kernel=4 must be a positive odd integer"),
        (dict(combo="bb", blur_kernel=3.0), r"blur_kernel=3.0 must be a positive odd integer"),
        (dict(combo="bb", blur_sigma=-1), r"blur_sigma=-1 must be"),
        (dict(combo="sf", sharpen_strength=float("nan")), r"sharpen_strength=nan"),
        (dict(combo="sf", sharpen_kernel=6), r"sharpen_kernel=6 is not allowed; allowed: \(4, 8\)"),
        (dict(combo="ef", equalize_mode="hsv"), r"equalize_mode='hsv' is not allowed; allowed: luminance, per_channel"),
    ],
)
def test_bad_combo_or_params_raise(kwargs, match):
    image, mask = random_sample()
    with pytest.raises(ValueError, match=match):
        apply(image, mask, **kwargs)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    m = torch.from_numpy(mask)[None, None]
    with pytest.raises(ValueError, match=match):
        apply_torch(x, m, **kwargs)


def test_bad_arrays_raise():
    image, mask = random_sample()
    with pytest.raises(ValueError, match=r"uint8 numpy array of shape \(H, W, 3\).*float32"):
        apply(image.astype(np.float32), mask, "rb")
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        apply(image[..., 0], mask, "rb")
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        apply(np.dstack([image, image[..., :1]]), mask, "rb")
    with pytest.raises(ValueError, match=r"mask must be a bool numpy array \(e.g. mask_png > 0\); got ndarray uint8"):
        apply(image, mask.astype(np.uint8) * 255, "rb")
    with pytest.raises(ValueError, match=r"mask shape \(24, 31\) must equal the image's \(H, W\) = \(24, 32\)"):
        apply(image, mask[:, :-1], "rb")


def test_bad_tensors_raise():
    x = torch.rand(2, 3, 8, 8)
    m = torch.rand(2, 1, 8, 8) > 0.5
    with pytest.raises(ValueError, match="float tensor"):
        apply_torch((x * 255).to(torch.uint8), m, "rb")
    with pytest.raises(ValueError, match="float tensor"):
        apply_torch(x[:, :1], m, "rb")
    with pytest.raises(ValueError, match="bool tensor"):
        apply_torch(x, m.float(), "rb")
    with pytest.raises(ValueError, match=r"masks shape \(2, 1, 8, 7\) must be \(B, 1, H, W\)"):
        apply_torch(x, m[..., :7], "rb")
    with pytest.raises(ValueError, match=r"in \[0, 1\].*divide by 255"):
        apply_torch(x * 255, m, "rb")


# ----------------------------------------------------------------------------- torch twin
def reflect101_reference(n, pad):
    row = np.arange(n, dtype=np.float32)[None]
    return cv2.copyMakeBorder(row, 0, 0, pad, pad, cv2.BORDER_REFLECT_101)[0].astype(int)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_reflect101_index_matches_opencv_even_for_wide_pads(n):
    for pad in (0, 1, 4, 12):
        idx = pp._reflect101_index(n, pad, pad, torch.device("cpu")).numpy()
        np.testing.assert_array_equal(idx, reflect101_reference(n, pad), err_msg=f"n={n} pad={pad}")


@pytest.mark.parametrize("shape, pad", [((4, 6), (1, 2)), ((4, 6), (3, 5)), ((3, 2), (5, 7)), ((1, 5), (2, 2))])
def test_pad_reflect101_matches_opencv(shape, pad):
    plane = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    expected = cv2.copyMakeBorder(plane, pad[0], pad[0], pad[1], pad[1], cv2.BORDER_REFLECT_101)
    got = pp._pad_reflect101(torch.from_numpy(plane)[None, None], *pad)[0, 0].numpy()
    np.testing.assert_array_equal(got, expected)


def to_batch(images, masks):
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    m = torch.from_numpy(np.stack(masks))[:, None]
    return x, m


TWIN_PARAMS = [
    {},
    dict(blur_kernel=3, blur_sigma=0.0, sharpen_strength=0.5, sharpen_kernel=8, equalize_mode="per_channel"),
    dict(blur_kernel=41, blur_sigma=6.0, sharpen_strength=2.5),  # kernel wider than the 24 px image
]


@pytest.mark.parametrize("params", TWIN_PARAMS, ids=["defaults", "small", "wide"])
@pytest.mark.parametrize("combo", list(COMBOS))
def test_torch_twin_agrees_with_opencv(combo, params):
    """Tolerance: max |round(255 * torch) - opencv| <= 1 level (1/255) per pixel.

    Both sides compute the same float math (same OpenCV Gaussian kernel, reflect-101, the same 3x3
    sharpening kernel); only float32 summation order differs, which can move a value across a .5
    rounding boundary (e.g. strength 0.5 gives exact .5 ties), i.e. by one level. Equalization is
    integer-exact on uint8-grid inputs, so combos without blur/sharpen must match exactly.
    """
    samples = [random_sample(24, 32, seed=s) for s in range(3)]
    images = [s[0] for s in samples]
    masks = [samples[0][1], np.zeros((24, 32), bool), np.ones((24, 32), bool)]
    masks[0][0, 0] = True
    x, m = to_batch(images, masks)
    out = apply_torch(x, m, combo, **params)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    got = torch.round(out * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(3):
        expected = apply(images[i], masks[i], combo, **params)
        diff = np.abs(got[i].astype(int) - expected.astype(int))
        assert diff.max() <= 1, f"sample {i}: max diff {diff.max()}"
        assert (diff > 0).mean() < 0.05
        if set(COMBOS[combo]) <= {"identity", "remove", "equalize"}:
            assert diff.max() == 0


def test_torch_twin_batch_is_per_sample():
    image_a, mask_a = random_sample(seed=7)
    image_b, mask_b = random_sample(seed=8)
    x, m = to_batch([image_a, image_b], [mask_a, mask_b])
    both = apply_torch(x, m, "bb_ef")
    alone = apply_torch(x[1:], m[1:], "bb_ef")
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-6)


def test_torch_twin_keeps_dtype_and_handles_half_and_double():
    image, mask = random_sample()
    x, m = to_batch([image], [mask])
    ref = apply_torch(x, m, "bb_sf")
    for dtype, atol in ((torch.float64, 1e-5), (torch.bfloat16, 1e-2)):  # bf16: 8-bit mantissa on output
        out = apply_torch(x.to(dtype), m, "bb_sf")
        assert out.dtype == dtype
        assert float((out.float() - ref).abs().max()) <= atol, dtype


def test_torch_twin_none_returns_a_copy():
    x, m = to_batch(*[[a] for a in random_sample()])
    out = apply_torch(x, m, "none")
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


# ----------------------------------------------------------------------------- configs
def test_conf_group_has_one_file_per_combo_with_explicit_defaults(compose_train):
    files = sorted(CONF_DIR.glob("[!_]*.yaml"))
    assert {f.stem for f in files} == set(COMBOS)
    for f in files:
        cfg = OmegaConf.to_container(compose_train(f"preprocess={f.stem}").preprocess)
        assert cfg.pop("combo") == f.stem
        assert cfg == DEFAULT_PARAMS, f.name


def test_from_config_and_apply_with_config_dict(compose_train):
    image, mask = random_sample()
    cfg = compose_train("preprocess=bb_ef").preprocess
    view = from_config(cfg)
    expected = apply(image, mask, "bb_ef")
    np.testing.assert_array_equal(view(image, mask), expected)
    np.testing.assert_array_equal(apply(image, mask, **OmegaConf.to_container(cfg)), expected)
    x, m = to_batch([image], [mask])
    torch.testing.assert_close(view.apply_torch(x, m), apply_torch(x, m, "bb_ef"))
    custom = from_config({"combo": "bb", "blur_kernel": 5})
    assert custom.params["blur_kernel"] == 5 and custom.params["blur_sigma"] == DEFAULT_PARAMS["blur_sigma"]
    assert from_config(None).is_identity
    with pytest.raises(ValueError, match="needs a 'combo' key"):
        from_config({"blur_kernel": 5})
    with pytest.raises(ValueError, match="unknown preprocess parameter"):
        from_config({"combo": "bb", "kernel": 5})
    with pytest.raises(ValueError, match="combo 'xx' is unknown"):
        from_config({"combo": "xx"})


def test_hydra_group_composes_and_overrides():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR.parent), version_base="1.3"):
        cfg = compose(overrides=["+preprocess=bb_sf", "preprocess.sharpen_kernel=8"])
    view = from_config(cfg.preprocess)
    assert view.combo == "bb_sf" and view.params == {**DEFAULT_PARAMS, "sharpen_kernel": 8}


# ----------------------------------------------------------------------------- CLI
def write_sample(folder: Path, h=40, w=56):
    image, mask = random_sample(h, w, seed=11)
    (folder / "images" / "val").mkdir(parents=True)
    (folder / "masks" / "val").mkdir(parents=True)
    image_path = folder / "images" / "val" / "a.jpg"
    mask_path = folder / "masks" / "val" / "a.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    cv2.imwrite(str(mask_path), mask.astype(np.uint8) * 255)
    return image_path, mask_path


def test_cli_grid_from_image_and_mask(tmp_path):
    image_path, mask_path = write_sample(tmp_path)
    out_path = tmp_path / "grid.png"
    pp.main(["--grid", "--image", str(image_path), "--mask", str(mask_path), "--out", str(out_path), "--tile-side", "56"])
    grid = cv2.imread(str(out_path))
    banner, tile_h, tile_w = 28, 40, 56  # tiles keep aspect: longest side 56
    assert grid.shape == (3 * (banner + tile_h), 3 * tile_w, 3)
    image, mask = pp.read_image_and_mask(image_path, mask_path)
    # tile (b) RB: background black, foreground = original
    rb_tile = cv2.cvtColor(grid[banner : banner + tile_h, tile_w : 2 * tile_w], cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rb_tile, apply(image, mask, "rb"))
    # every banner carries drawn text (non-white pixels)
    for r in range(3):
        for c in range(3):
            b = grid[r * (banner + tile_h) : r * (banner + tile_h) + banner, c * tile_w : (c + 1) * tile_w]
            assert (b < 128).any()


def test_cli_single_view_and_errors(tmp_path):
    image_path, mask_path = write_sample(tmp_path)
    out_path = tmp_path / "view.png"
    pp.main(["--combo", "rb_ef", "--image", str(image_path), "--mask", str(mask_path), "--out", str(out_path),
             "--equalize-mode", "per_channel"])
    image, mask = pp.read_image_and_mask(image_path, mask_path)
    got = cv2.cvtColor(cv2.imread(str(out_path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, apply(image, mask, "rb_ef", equalize_mode="per_channel"))
    with pytest.raises(SystemExit):
        pp.main(["--grid", "--image", str(image_path), "--out", str(out_path)])
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"mask .*small.png is \(8, 8\) \(W, H\) but image .*a.jpg is \(56, 40\)"):
        pp.main(["--grid", "--image", str(image_path), "--mask", str(small), "--out", str(out_path)])
    with pytest.raises(ValueError, match="cannot read image"):
        pp.read_image_and_mask(tmp_path / "missing.jpg", mask_path)


def test_cli_without_image_uses_synthpipes_sample(tmp_path, monkeypatch):
    calls = {}

    def fake_ensure_dataset(cache_root=None, **settings):
        calls.update(settings)
        write_sample(tmp_path / "ds")
        return tmp_path / "ds"

    fake = types.ModuleType("fgkd.data.synth.synthpipes")
    fake.ensure_dataset = fake_ensure_dataset
    monkeypatch.setitem(sys.modules, "fgkd.data.synth.synthpipes", fake)
    out_path = tmp_path / "grid.png"
    pp.main(["--grid", "--out", str(out_path), "--max-side", "56", "--num-images", "1", "--tile-side", "32"])
    assert calls == {"max_side": 56, "num_images": 1}
    assert cv2.imread(str(out_path)) is not None


def test_mask_path_follows_contract():
    assert pp.mask_path_for(Path("/d/images/x/images/train/a.jpg")) == Path("/d/images/x/masks/train/a.png")
    with pytest.raises(ValueError, match="no 'images' component"):
        pp.mask_path_for(Path("/d/pics/a.jpg"))


def test_non_contiguous_inputs_are_accepted():
    image, mask = random_sample()
    bgr_view, flipped_mask = image[..., ::-1], mask[:, ::-1]
    for combo in ("bb_ef", "rb_sf"):
        np.testing.assert_array_equal(
            apply(bgr_view, flipped_mask, combo),
            apply(np.ascontiguousarray(bgr_view), np.ascontiguousarray(flipped_mask), combo),
        )


@pytest.mark.slow
def test_cli_with_real_synthpipes(tmp_path, monkeypatch):
    pytest.importorskip("fgkd.data.synth.synthpipes")
    monkeypatch.setenv("FGKD_CACHE", str(tmp_path / "cache"))
    out_path = tmp_path / "grid.png"
    pp.main(["--grid", "--out", str(out_path), "--max-side", "96", "--num-images", "2", "--tile-side", "96"])
    assert cv2.imread(str(out_path)).shape[1] == 3 * 96
