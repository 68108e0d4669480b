"""The teacher's view X_M = T_fg(X)⊙M + T_bg(X)⊙¬M (FAKD paper, §3.1, Eq. 1-4, Fig. 4).

Two implementations that are tested to agree:

* :func:`apply` — one uint8 RGB image + bool mask, OpenCV/numpy (data workers);
* :func:`apply_torch` — a float batch in [0, 1] on any device (the training step).

Transforms (both T act on the *whole* image; the mask only selects which result each pixel takes,
so e.g. sharpening near the pipe edge sees background neighbours, exactly as in Eq. 2-3):

* T_bg: ``identity``; ``remove`` (→ 0); ``blur`` (Gaussian, ``blur_kernel`` × ``blur_kernel``,
  ``blur_sigma``; sigma 0 = OpenCV's rule ``0.3·((k-1)/2 - 1) + 0.8``).
* T_fg: ``identity``; ``sharpen`` = Laplacian sharpening ``I - strength·∇²I`` with the 4- or
  8-neighbour Laplacian (centre -4 / -8), i.e. kernel ``δ - strength·L``; ``equalize`` = histogram
  equalization, Eq. 1, with the histogram and CDF taken over the FOREGROUND pixels only:
  ``LUT[i] = round((L-1)/N · Σ_{j≤i} h(j))``, L = 256, N = number of foreground pixels,
  round = half to even (numpy ``rint``, ``torch.round``, OpenCV ``cvRound``), done in exact integer
  arithmetic. Note Eq. 1 is not ``cv2.equalizeHist`` (which subtracts the CDF minimum and has no mask).

Colour handling of ``equalize`` (``equalize_mode``):

* ``luminance`` (default): equalize Y of YCrCb (OpenCV's Y = 0.299R + 0.587G + 0.114B, its exact
  fixed-point uint8 formula), then add ΔY = LUT[Y] - Y to R, G and B. That is the exact YCrCb→RGB
  inverse with Cr, Cb unchanged (the Cr/Cb coefficients make R-Y and B-Y invariant), so hue is kept
  and chroma is not re-quantized; only the final clip to [0, 255] can move it.
* ``per_channel``: equalize R, G and B independently (each with its own foreground histogram);
  stronger contrast but shifts hue.

Rounding and borders: blur and sharpen accumulate in float32 (the blur is not cv2.GaussianBlur on
uint8, whose fixed-point kernel is up to 2 levels off the exact result, but the same kernel from
cv2.getGaussianKernel applied with cv2.sepFilter2D into float32), then round half to even and
saturate to uint8 (OpenCV's saturate_cast); borders are BORDER_REFLECT_101 (OpenCV's default) in
both implementations. The torch twin keeps blur/sharpen in float (clamped to [0, 1], not snapped to
the 1/255 grid) and quantizes only for the equalization histogram (levels = round(255·x)); on
uint8-grid inputs round(255·apply_torch) is within 1 level of apply (tests/test_preprocess.py).

Edge cases: an empty mask makes T_fg a no-op and T_bg applies to the whole image; a full mask
makes T_bg a no-op and T_fg applies to the whole image (the equalization statistics are then those
of the whole image).

CLI (Fig. 4-style 3×3 grid of the nine views, or one view)::

    python -m fgkd.preprocess --grid --out grid.png                       # a SynthPipes sample
    python -m fgkd.preprocess --grid --image IMG --mask MASK --out grid.png
    python -m fgkd.preprocess --combo bb_ef --image IMG --mask MASK --out view.png
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fgkd.options import COMBOS

#: paper's short names (Tables 1-2, Fig. 4)
COMBO_LABELS: dict[str, str] = {
    "none": "Original",
    "rb": "RB",
    "bb": "BB",
    "sf": "SF",
    "ef": "EF",
    "rb_sf": "RB&SF",
    "rb_ef": "RB&EF",
    "bb_sf": "BB&SF",
    "bb_ef": "BB&EF",
}

#: the order of Fig. 4's caption, (a) … (i)
FIG4_ORDER = ("none", "rb", "bb", "sf", "rb_sf", "bb_sf", "ef", "rb_ef", "bb_ef")

# The paper gives no filter settings. Blur: a 21×21 kernel with sigma 3.5 (= OpenCV's own sigma
# for ksize 21) clearly smooths background clutter at 320-640 px while keeping its layout.
# Sharpen: strength 1 with the 4-neighbour Laplacian is the textbook sharpening kernel
# [[0,-1,0],[-1,5,-1],[0,-1,0]]. Equalize: luminance keeps the pipe's colour (see module doc).
DEFAULT_PARAMS: dict[str, Any] = {
    "blur_kernel": 21,
    "blur_sigma": 3.5,
    "sharpen_strength": 1.0,
    "sharpen_kernel": 4,
    "equalize_mode": "luminance",
}

SHARPEN_KERNELS = (4, 8)
EQUALIZE_MODES = ("luminance", "per_channel")
LEVELS = 256  # L in Eq. 1 (uint8 intensities)

# OpenCV's fixed-point RGB->Y coefficients (14 fractional bits); cv2.cvtColor(RGB2YCrCb) uses exactly
# Y = (4899 R + 9617 G + 1868 B + 2^13) >> 14 for uint8 (checked in tests against cv2).
_Y_COEFFS = (4899, 9617, 1868)
_Y_SHIFT = 14


# ----------------------------------------------------------------------------- validation
def _check_combo(combo: Any) -> tuple[str, str]:
    if combo not in COMBOS:
        raise ValueError(f"preprocess combo {combo!r} is unknown; allowed: {', '.join(COMBOS)}")
    return COMBOS[combo]


def resolve_params(**params: Any) -> dict[str, Any]:
    """DEFAULT_PARAMS updated with ``params``, validated; raises ValueError naming the bad key."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(
            f"unknown preprocess parameter(s) {unknown}; allowed: {', '.join(DEFAULT_PARAMS)}"
        )
    p = {**DEFAULT_PARAMS, **params}
    k = p["blur_kernel"]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ValueError(f"preprocess blur_kernel={k!r} must be a positive odd integer (e.g. 21)")
    s = p["blur_sigma"]
    if isinstance(s, bool) or not isinstance(s, (int, float, np.number)) or not math.isfinite(s) or s < 0:
        raise ValueError(f"preprocess blur_sigma={s!r} must be a finite number >= 0 (0 = OpenCV's rule from blur_kernel)")
    st = p["sharpen_strength"]
    if isinstance(st, bool) or not isinstance(st, (int, float, np.number)) or not math.isfinite(st) or st < 0:
        raise ValueError(f"preprocess sharpen_strength={st!r} must be a finite number >= 0")
    if p["sharpen_kernel"] not in SHARPEN_KERNELS or isinstance(p["sharpen_kernel"], bool):
        raise ValueError(
            f"preprocess sharpen_kernel={p['sharpen_kernel']!r} is not allowed; allowed: {SHARPEN_KERNELS} "
            "(4- or 8-neighbour Laplacian)"
        )
    if p["equalize_mode"] not in EQUALIZE_MODES:
        raise ValueError(
            f"preprocess equalize_mode={p['equalize_mode']!r} is not allowed; allowed: {', '.join(EQUALIZE_MODES)}"
        )
    p["blur_kernel"] = int(k)
    p["blur_sigma"] = float(s)
    p["sharpen_strength"] = float(st)
    p["sharpen_kernel"] = int(p["sharpen_kernel"])
    return p


def _check_numpy_inputs(image: Any, mask: Any) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"preprocess image must be a uint8 numpy array of shape (H, W, 3) RGB; got {got}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        got = f"{type(mask).__name__} {getattr(mask, 'dtype', '')}"
        raise ValueError(f"preprocess mask must be a bool numpy array (e.g. mask_png > 0); got {got}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"preprocess mask shape {mask.shape} must equal the image's (H, W) = {image.shape[:2]}")


# ----------------------------------------------------------------------------- kernels (shared)
def gaussian_kernel_1d(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV's 1-D Gaussian (``cv2.getGaussianKernel``), float64, sums to 1."""
    return cv2.getGaussianKernel(ksize, sigma, cv2.CV_64F).ravel()


def sharpen_kernel_3x3(strength: float, neighbours: int) -> np.ndarray:
    """``δ - strength·L`` with L the 4-neighbour (centre -4) or 8-neighbour (centre -8) Laplacian."""
    if neighbours == 4:
        laplacian = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    else:
        laplacian = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], np.float64)
    identity = np.zeros((3, 3), np.float64)
    identity[1, 1] = 1.0
    return identity - strength * laplacian


def _eq1_lut(hist: np.ndarray) -> np.ndarray:
    """Eq. 1 LUT from a (…, 256) int histogram; round half to even in exact integer arithmetic.

    An empty histogram (N = 0) gives the identity LUT (nothing to equalize).
    """
    cdf = np.cumsum(hist, axis=-1, dtype=np.int64)
    n = cdf[..., -1:]
    num = (LEVELS - 1) * cdf
    safe_n = np.maximum(n, 1)
    quot, rem = num // safe_n, num % safe_n
    round_up = (2 * rem > safe_n) | ((2 * rem == safe_n) & (quot % 2 == 1))
    lut = quot + round_up
    return np.where(n > 0, lut, np.arange(LEVELS, dtype=np.int64)).astype(np.uint8)


# ----------------------------------------------------------------------------- numpy / OpenCV
def _blur_np(image: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    # = cv2.GaussianBlur on a float32 copy (same kernel, bit-identical), without the copy.
    kernel = gaussian_kernel_1d(p["blur_kernel"], p["blur_sigma"]).astype(np.float32)
    blurred = cv2.sepFilter2D(image, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)
    # A Gaussian is a convex combination, so the result is already in [0, 255]: abs() is a no-op
    # (beyond float dust at 0) and convertScaleAbs is a fast round-half-even + saturate to uint8.
    return cv2.convertScaleAbs(blurred)


def _sharpen_np(image: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    kernel = sharpen_kernel_3x3(p["sharpen_strength"], p["sharpen_kernel"]).astype(np.float32)
    # uint8 -> uint8 filter2D accumulates in float and saturate-casts (round half to even, clip).
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def _equalize_np(image: np.ndarray, mask: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    if p["equalize_mode"] == "per_channel":
        luts = [_eq1_lut(_masked_hist(image[..., c], mask)) for c in range(3)]
        return cv2.LUT(image, np.stack(luts, axis=-1)[None])  # (1, 256, 3): one LUT per channel
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)[..., 0]
    delta = _eq1_lut(_masked_hist(luma, mask)).astype(np.int16) - np.arange(LEVELS, dtype=np.int16)
    # clip(X + ΔY) with saturating uint8 adds: ΔY split into its positive and negative parts.
    raise_by = cv2.cvtColor(cv2.LUT(luma, np.clip(delta, 0, 255).astype(np.uint8)), cv2.COLOR_GRAY2RGB)
    lower_by = cv2.cvtColor(cv2.LUT(luma, np.clip(-delta, 0, 255).astype(np.uint8)), cv2.COLOR_GRAY2RGB)
    return cv2.subtract(cv2.add(image, raise_by), lower_by)


def _masked_hist(channel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # np.bincount counts exactly in int64 (cv2.calcHist counts in float32: inexact above 2^24 pixels).
    return np.bincount(channel[mask], minlength=LEVELS)


def apply(image: np.ndarray, mask: np.ndarray, combo: str = "none", **params: Any) -> np.ndarray:
    """X_M = T_fg(X)⊙M + T_bg(X)⊙¬M for one image (Eq. 2-4).

    Args:
        image: uint8 RGB array (H, W, 3).
        mask: bool array (H, W); True = foreground (pipe).
        combo: one of :data:`COMBOS`.
        **params: any of :data:`DEFAULT_PARAMS` (all keys accepted for every combo).

    Returns:
        a new uint8 array (H, W, 3).
    """
    bg_name, fg_name = _check_combo(combo)
    p = resolve_params(**params)
    _check_numpy_inputs(image, mask)
    image = np.ascontiguousarray(image)
    mask8 = np.ascontiguousarray(mask).view(np.uint8)
    any_fg, all_fg = bool(mask.any()), bool(mask.all())
    if bg_name == "identity" or all_fg:
        out = image.copy()
    elif bg_name == "remove":
        out = np.zeros_like(image)
    else:
        out = _blur_np(image, p)
    if fg_name == "identity" or not any_fg:
        fg = image
    elif fg_name == "sharpen":
        fg = _sharpen_np(image, p)
    else:
        fg = _equalize_np(image, mask, p)
    cv2.copyTo(fg, mask8, out)  # in place: out[M] = fg[M]
    return out


# ----------------------------------------------------------------------------- torch twin
def _reflect101_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices for BORDER_REFLECT_101 padding of any width (also wider than the image)."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def _pad_reflect101(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if pad_h < h and pad_w < w:  # F.pad's "reflect" is reflect-101 (and much faster than gathering)
        return F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    # F.pad refuses pads >= the image side; OpenCV keeps reflecting, so gather those indices.
    x = x.index_select(-2, _reflect101_index(h, pad_h, pad_h, x.device))
    return x.index_select(-1, _reflect101_index(w, pad_w, pad_w, x.device))


def _blur_torch(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    k = p["blur_kernel"]
    g = torch.as_tensor(gaussian_kernel_1d(k, p["blur_sigma"]), dtype=x.dtype, device=x.device)
    c = x.shape[1]
    padded = _pad_reflect101(x, k // 2, k // 2)
    out = F.conv2d(padded, g.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, g.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)


def _sharpen_torch(x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    kernel = torch.as_tensor(
        sharpen_kernel_3x3(p["sharpen_strength"], p["sharpen_kernel"]), dtype=x.dtype, device=x.device
    )
    c = x.shape[1]
    out = F.conv2d(_pad_reflect101(x, 1, 1), kernel.view(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    return out.clamp(0.0, 1.0)


def _eq1_lut_torch(levels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-(sample, channel) Eq. 1 LUTs, (B, C, 256) int64, from int levels (B, C, H, W) and masks (B, 1, H, W)."""
    b, c = levels.shape[:2]
    group = torch.arange(b * c, device=levels.device).view(b, c, 1, 1) * LEVELS
    selected = (levels + group)[masks.expand_as(levels)]
    hist = torch.bincount(selected, minlength=b * c * LEVELS).view(b, c, LEVELS)
    cdf = hist.cumsum(-1)
    n = cdf[..., -1:]
    safe_n = n.clamp_min(1)
    num = (LEVELS - 1) * cdf
    quot = torch.div(num, safe_n, rounding_mode="floor")
    rem = num - quot * safe_n
    round_up = (2 * rem > safe_n) | ((2 * rem == safe_n) & (quot % 2 == 1))
    lut = quot + round_up.long()
    identity = torch.arange(LEVELS, device=levels.device).expand_as(lut)
    return torch.where(n > 0, lut, identity)


def luma_levels(levels: torch.Tensor) -> torch.Tensor:
    """Y of YCrCb, (B, 1, H, W) int64, from uint8-valued RGB levels (B, 3, H, W); bit-exact with cv2.cvtColor."""
    r, g, b = levels.unbind(1)
    cr, cg, cb = _Y_COEFFS
    return ((cr * r + cg * g + cb * b + (1 << (_Y_SHIFT - 1))) >> _Y_SHIFT).unsqueeze(1)


def _equalize_torch(x: torch.Tensor, masks: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    levels = torch.round(x * 255.0).clamp(0, 255).long()
    if p["equalize_mode"] == "per_channel":
        lut = _eq1_lut_torch(levels, masks)
        return torch.gather(lut, 2, levels.flatten(2)).view_as(levels).to(x.dtype) / 255.0
    luma = luma_levels(levels)
    lut = _eq1_lut_torch(luma, masks)
    new_luma = torch.gather(lut, 2, luma.flatten(2)).view_as(luma)
    return (x + (new_luma - luma).to(x.dtype) / 255.0).clamp(0.0, 1.0)


def _check_torch_inputs(images: Any, masks: Any) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
        raise ValueError(f"apply_torch images must be a float tensor (B, 3, H, W) in [0, 1]; got {got}")
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
        got = f"{type(masks).__name__} {getattr(masks, 'dtype', '')}"
        raise ValueError(f"apply_torch masks must be a bool tensor (B, 1, H, W); got {got}")
    b, _, h, w = images.shape
    if tuple(masks.shape) != (b, 1, h, w):
        raise ValueError(f"apply_torch masks shape {tuple(masks.shape)} must be (B, 1, H, W) = {(b, 1, h, w)}")
    if masks.device != images.device:
        raise ValueError(f"apply_torch masks are on {masks.device} but images on {images.device}; move one")


def apply_torch(images: torch.Tensor, masks: torch.Tensor, combo: str = "none", **params: Any) -> torch.Tensor:
    """Batched twin of :func:`apply` on float images in [0, 1] (any device, no gradients needed).

    Blur and sharpen are computed in float (not rounded to the uint8 grid); equalize quantizes to
    256 levels (``round(x·255)``) for its histogram, per sample, from that sample's foreground.
    Half-precision inputs are processed in float32 and returned in their dtype.

    Args:
        images: float (B, 3, H, W) in [0, 1], RGB.
        masks: bool (B, 1, H, W), True = foreground.
        combo: one of :data:`COMBOS`; params: any of :data:`DEFAULT_PARAMS`.
    """
    bg_name, fg_name = _check_combo(combo)
    p = resolve_params(**params)
    _check_torch_inputs(images, masks)
    if combo == "none" or images.numel() == 0:
        return images.clone()
    lo_hi = torch.stack([images.amin(), images.amax()]).tolist()  # one sync; catches 0-255 inputs
    if lo_hi[0] < -1e-3 or lo_hi[1] > 1.0 + 1e-3:
        raise ValueError(f"apply_torch images must be in [0, 1]; got range [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}] (divide by 255?)")
    x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    # Eq. 2-4 per sample: an empty mask selects only T_bg, a full mask only T_fg, via torch.where.
    if fg_name == "sharpen":
        fg = _sharpen_torch(x, p)
    elif fg_name == "equalize":
        fg = _equalize_torch(x, masks, p)
    else:
        fg = x
    if bg_name == "remove":
        bg = torch.zeros_like(x)
    elif bg_name == "blur":
        bg = _blur_torch(x, p)
    else:
        bg = x
    return torch.where(masks, fg, bg).to(images.dtype)


# ----------------------------------------------------------------------------- config helper
@dataclass(frozen=True)
class Preprocess:
    """A configured teacher view: ``view(image, mask)`` (numpy) and ``view.apply_torch(images, masks)``."""

    combo: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_combo(self.combo)
        object.__setattr__(self, "params", resolve_params(**self.params))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return apply(image, mask, self.combo, **self.params)

    def apply_torch(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return apply_torch(images, masks, self.combo, **self.params)

    @property
    def is_identity(self) -> bool:
        return self.combo == "none"


def from_config(cfg: Mapping[str, Any] | None) -> Preprocess:
    """Build a :class:`Preprocess` from a ``conf/preprocess/*.yaml`` mapping (dict or DictConfig).

    ``cfg`` holds ``combo`` plus any of :data:`DEFAULT_PARAMS`; ``None`` means ``combo: none``.
    The same mapping also works as ``apply(image, mask, **cfg)``.
    """
    if cfg is None:
        return Preprocess()
    if not isinstance(cfg, Mapping):  # omegaconf.DictConfig is not a typing Mapping subclass in every version
        from fgkd.config import to_plain

        cfg = to_plain(cfg)
    if not isinstance(cfg, Mapping):
        raise ValueError(f"preprocess config must be a mapping with 'combo' and parameters; got {type(cfg).__name__}")
    cfg = dict(cfg)
    if "combo" not in cfg:
        raise ValueError(f"preprocess config needs a 'combo' key; allowed: {', '.join(COMBOS)}")
    combo = cfg.pop("combo")
    return Preprocess(combo, cfg)


# ----------------------------------------------------------------------------- CLI
def make_grid(image: np.ndarray, mask: np.ndarray, tile_side: int = 320, **params: Any) -> np.ndarray:
    """Fig. 4-style 3×3 grid (uint8 RGB) of the nine views, each tile with a labelled banner."""
    tiles = []
    letters = "abcdefghi"
    for letter, combo in zip(letters, FIG4_ORDER, strict=True):
        view = apply(image, mask, combo, **params)
        h, w = view.shape[:2]
        scale = tile_side / max(h, w)
        view = cv2.resize(view, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        tiles.append(_label_tile(view, f"({letter}) {COMBO_LABELS[combo]}"))
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    canvas = np.full((3 * th, 3 * tw, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, 3)
        canvas[r * th : r * th + tile.shape[0], c * tw : c * tw + tile.shape[1]] = tile
    return canvas


def _label_tile(view: np.ndarray, text: str, banner_h: int = 28) -> np.ndarray:
    banner = np.full((banner_h, view.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, text, (6, banner_h - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([banner, view], axis=0)


def read_image_and_mask(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB image and bool mask (pixel > 0) from files; errors name the file."""
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {image_path}: missing or not an image file")
    gray = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(f"cannot read mask {mask_path}: missing or not an image file (expected a 0/255 PNG)")
    if gray.shape != bgr.shape[:2]:
        raise ValueError(f"mask {mask_path} is {gray.shape[::-1]} (W, H) but image {image_path} is {bgr.shape[1::-1]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), gray > 0


def mask_path_for(image_path: Path) -> Path:
    """Contract rule: replace the last ``images`` path component with ``masks``, suffix ``.png``."""
    parts = list(image_path.parts)
    if "images" not in parts:
        raise ValueError(f"image path {image_path} has no 'images' component to derive its mask path from")
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "masks"
    return Path(*parts).with_suffix(".png")


def _synthpipes_sample(index: int, max_side: int, num_images: int) -> tuple[Path, Path]:
    try:
        from fgkd.data.imageio import IMAGE_SUFFIXES
        from fgkd.data.synth.synthpipes import ensure_dataset  # lazy: only the no-image CLI path needs it
    except ImportError as err:
        raise SystemExit(f"SynthPipes is not available ({err}); pass --image IMG --mask MASK instead") from err
    root = Path(ensure_dataset(max_side=max_side, num_images=num_images))
    images = sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"no images found under {root / 'images'}")
    image = images[index % len(images)]
    return image, mask_path_for(image)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fgkd.preprocess", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--grid", action="store_true", help="write the Fig. 4-style 3×3 grid of all nine views")
    what.add_argument("--combo", choices=list(COMBOS), help="write one view")
    parser.add_argument("--image", type=Path, help="RGB image (default: a SynthPipes sample)")
    parser.add_argument("--mask", type=Path, help="foreground mask PNG (pixel > 0 = foreground)")
    parser.add_argument("--out", type=Path, required=True, help="output PNG/JPG path")
    parser.add_argument("--tile-side", type=int, default=320, help="longest side of each grid tile (px)")
    parser.add_argument("--index", type=int, default=0, help="which SynthPipes image to show")
    parser.add_argument("--max-side", type=int, default=320, help="SynthPipes image size")
    parser.add_argument("--num-images", type=int, default=8, help="SynthPipes dataset size")
    for key, value in DEFAULT_PARAMS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=type(value), default=value)
    args = parser.parse_args(argv)
    if (args.image is None) != (args.mask is None):
        parser.error("give both --image and --mask, or neither (a SynthPipes sample is used)")
    if args.image is None:
        image_path, mask_path = _synthpipes_sample(args.index, args.max_side, args.num_images)
    else:
        image_path, mask_path = args.image, args.mask
    image, mask = read_image_and_mask(image_path, mask_path)
    params = {key: getattr(args, key) for key in DEFAULT_PARAMS}
    if args.grid:
        out = make_grid(image, mask, tile_side=args.tile_side, **params)
    else:
        out = apply(image, mask, args.combo, **params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(out, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"could not write {args.out} (unsupported extension or unwritable folder)")
    print(f"wrote {args.out} ({image_path}, mask {mask_path})")


if __name__ == "__main__":
    main()
