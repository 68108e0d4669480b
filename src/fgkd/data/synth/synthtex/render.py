"""SynthTex rendering: procedural textures and objects, and low-contrast defects with their pixel masks.

Every image is drawn from its own seeded generator (``(seed, category, split, defect, index)``), so one image
never depends on how many others were drawn. Normal images vary in phase, orientation, colour and (objects)
pose, so the mean training image is blurry and a per-pixel distance to it (the trivial baseline) fires on the
normal variation too. Defects are kept near the surface's own contrast: a scratch changes intensity by about
one texture standard deviation, ``structure`` replaces the texture by a re-drawn patch of the same statistics
(no brightness change at all), ``colour`` shifts hue at constant luminance — none is solvable by brightness.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import cv2
import numpy as np

from fgkd.data.synth.draw import smooth_noise

TEXTURES = ("woven", "grain", "leather", "brushed_metal", "carpet")
OBJECTS = ("washer", "capsule")
CATEGORIES = TEXTURES + OBJECTS
#: defect types per category (MVTec-like: 3-4 per category)
DEFECTS: dict[str, tuple[str, ...]] = {
    "woven": ("cut", "hole", "structure"),
    "grain": ("scratch", "stain", "colour"),
    "leather": ("cut", "stain", "structure"),
    "brushed_metal": ("scratch", "hole", "stain"),
    "carpet": ("hole", "colour", "structure"),
    "washer": ("scratch", "missing", "stain"),
    "capsule": ("missing", "colour", "scratch"),
}


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


# -- textures (float32 RGB in [0, 1]) ------------------------------------------------------------------
def _grid(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    return x * c + y * s, -x * s + y * c


def _tint(gray: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.clip(gray[..., None] * colour[None, None, :], 0, 1).astype(np.float32)


def woven(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _grid(size, rng.uniform(-0.08, 0.08))
    period = rng.uniform(7.5, 8.5)
    phase = rng.uniform(0, 2 * np.pi, 2)
    warp = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase[0])
    weft = 0.5 + 0.5 * np.sin(2 * np.pi * v / period + phase[1])
    over = (np.sin(np.pi * u / period + phase[0] / 2) * np.sin(np.pi * v / period + phase[1] / 2)) > 0
    gray = 0.45 + 0.25 * np.where(over, warp, weft) + 0.03 * smooth_noise(rng, size, size, 3)
    return _tint(gray, np.array([0.95, 0.9, 0.8]) * rng.uniform(0.95, 1.05))


def grain(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _grid(size, rng.uniform(-0.15, 0.15))
    warp = 6 * smooth_noise(rng, size, size, 40)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (v + warp) / rng.uniform(9, 11) + 0.3 * smooth_noise(rng, size, size, 12))
    gray = 0.5 + 0.18 * rings + 0.04 * smooth_noise(rng, size, size, 2)
    return _tint(gray, np.array([1.0, 0.72, 0.45]) * rng.uniform(0.95, 1.05))


def leather(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = np.abs(smooth_noise(rng, size, size, 6))
    gray = 0.42 + 0.08 * (1 - np.clip(cells, 0, 1.5)) + 0.03 * smooth_noise(rng, size, size, 1.5)
    return _tint(gray, np.array([0.75, 0.5, 0.35]) * rng.uniform(0.95, 1.05))


def brushed_metal(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.standard_normal((size, size)).astype(np.float32)
    length = int(size // 3) | 1
    streaks = cv2.blur(noise, (length, 1)) * np.sqrt(length)
    angle = rng.uniform(-3, 3)
    rot = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    streaks = cv2.warpAffine(streaks, rot, (size, size), borderMode=cv2.BORDER_REFLECT)
    gray = 0.6 + 0.04 * streaks + 0.06 * smooth_noise(rng, size, size, size / 2)
    return _tint(gray, np.array([0.93, 0.95, 1.0]))


def carpet(rng: np.random.Generator, size: int) -> np.ndarray:
    colour = np.array([0.35, 0.42, 0.6]) * rng.uniform(0.95, 1.05)
    fibres = np.stack([smooth_noise(rng, size, size, 1.3) for _ in range(3)], -1)
    tufts = smooth_noise(rng, size, size, 4)[..., None]
    return np.clip(colour * (1 + 0.12 * fibres + 0.1 * tufts), 0, 1).astype(np.float32)


TEXTURE_RENDERERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "woven": woven, "grain": grain, "leather": leather, "brushed_metal": brushed_metal, "carpet": carpet,
}


# -- objects: (image, foreground mask) -------------------------------------------------------------------
def washer(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    bg = 0.18 + 0.02 * smooth_noise(rng, size, size, size / 4)
    image = _tint(bg, np.array([1.0, 1.0, 1.0]))
    centre = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    r_out, r_in = size * rng.uniform(0.34, 0.37), size * rng.uniform(0.15, 0.17)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.hypot(x - centre[0], y - centre[1])
    fg = ((d < r_out) & (d > r_in)).astype(np.float32)
    fg = cv2.GaussianBlur(fg, (3, 3), 0)
    shade = 0.62 + 0.08 * (x - centre[0]) / size + 0.03 * smooth_noise(rng, size, size, 3)
    metal = _tint(shade, np.array([0.9, 0.88, 0.82]))
    return (image * (1 - fg[..., None]) + metal * fg[..., None]).astype(np.float32), fg


def capsule(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = _tint(0.82 + 0.015 * smooth_noise(rng, size, size, size / 3), np.array([1.0, 1.0, 0.98]))
    centre = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    angle = rng.uniform(-12, 12)
    half_len, radius = size * 0.3, size * 0.13
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.deg2rad(angle)
    u = (x - centre[0]) * np.cos(t) + (y - centre[1]) * np.sin(t)
    v = -(x - centre[0]) * np.sin(t) + (y - centre[1]) * np.cos(t)
    along = np.clip(np.abs(u) - (half_len - radius), 0, None)
    fg = cv2.GaussianBlur((np.hypot(along, v) < radius).astype(np.float32), (3, 3), 0)
    shade = 0.75 - 0.25 * (v / radius) ** 2
    left = np.array([0.85, 0.3, 0.25]) * shade[..., None]
    right = np.array([0.95, 0.92, 0.85]) * shade[..., None]
    body = np.where((u < 0)[..., None], left, right).astype(np.float32)
    return (image * (1 - fg[..., None]) + body * fg[..., None]).astype(np.float32), fg


OBJECT_RENDERERS = {"washer": washer, "capsule": capsule}


def illumination(rng: np.random.Generator, size: int) -> np.ndarray:
    """A per-image lighting field: global gain ~N(1, 0.05) and a linear gradient of up to ±7 % (camera and
    lamp drift between shots). Cosine-distance features barely see it; a per-pixel distance sees it everywhere."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(0, 0.14)
    return (rng.normal(1.0, 0.05) * (1 + ramp))[..., None].astype(np.float32)


def render_normal(category: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A defect-free image and, for objects, its foreground mask (defects are placed on the object)."""
    if category in TEXTURE_RENDERERS:
        image, fg = TEXTURE_RENDERERS[category](rng, size), None
    elif category in OBJECT_RENDERERS:
        image, fg = OBJECT_RENDERERS[category](rng, size)
    else:
        raise ValueError(f"unknown SynthTex category {category!r}; choose from {', '.join(CATEGORIES)}")
    return np.clip(image * illumination(rng, size), 0, 1).astype(np.float32), fg


# -- defects ---------------------------------------------------------------------------------------------
def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    wobble = 1 + 0.35 * smooth_noise(rng, size, size, max(radius, 2))
    return (np.hypot(x - centre[0], y - centre[1]) < radius * wobble).astype(np.float32)


def _stroke(rng: np.random.Generator, size: int, centre: np.ndarray, length: float, width: int) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    steps = np.linspace(-0.5, 0.5, 6)[:, None] * length
    bend = rng.normal(0, length * 0.06, (6, 1))
    d, n = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    pts = centre + steps * d + bend * n
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, max(1, width), cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _luminance(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def apply_defect(category: str, defect: str, image: np.ndarray, fg: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(defective image, binary mask uint8 0/255)``; the mask is the changed region."""
    size = image.shape[0]
    if fg is not None:  # on the object
        ys, xs = np.nonzero(fg > 0.9)
        pick = rng.integers(len(ys))
        centre = np.array([xs[pick], ys[pick]], np.float32)
    else:
        centre = rng.uniform(0.2, 0.8, 2).astype(np.float32) * size
    # the surface's own contrast around the defect (not the object/background edge of the whole image)
    x0, y0 = (np.clip(centre - size // 8, 0, size - 1)).astype(int)
    window = _luminance(image)[y0:y0 + size // 4, x0:x0 + size // 4]
    if fg is not None:
        window = window[fg[y0:y0 + size // 4, x0:x0 + size // 4] > 0.9]
    std = float(window.std()) + 0.02
    out = image.copy()
    if defect in ("scratch", "cut"):
        width = 1 if defect == "scratch" else 2
        alpha = _stroke(rng, size, centre, size * rng.uniform(0.25, 0.45), width)
        sign = rng.choice([-1.0, 1.0]) if defect == "scratch" else -1.0
        delta = sign * std * (0.9 if defect == "scratch" else 1.2)
        out = image + alpha[..., None] * delta
        region = alpha
    elif defect == "hole":
        region = cv2.GaussianBlur(_blob(rng, size, centre, size * rng.uniform(0.03, 0.06)), (3, 3), 0)
        inner = cv2.GaussianBlur(image, (5, 5), 0) * 0.78 + 0.04  # a shallow, shadowed pit: texture lost
        out = image * (1 - region[..., None]) + inner * region[..., None]
    elif defect == "stain":
        region = cv2.GaussianBlur(_blob(rng, size, centre, size * rng.uniform(0.07, 0.12)), (7, 7), 0)
        tint = 1 + rng.choice([-1.0, 1.0]) * np.array([0.09, 0.04, -0.04]) * rng.uniform(0.8, 1.2)
        out = image * (1 - region[..., None]) + np.clip(image * tint, 0, 1) * region[..., None]
    elif defect == "colour":
        region = cv2.GaussianBlur(_blob(rng, size, centre, size * rng.uniform(0.1, 0.16)), (9, 9), 0)
        lum = _luminance(image)[..., None]
        chroma = image - lum
        strength = rng.uniform(0.3, 0.45)  # a partial hue rotation at the same luminance
        shifted = lum + chroma * (1 - strength) + np.roll(chroma, 1, axis=-1) * strength
        out = image * (1 - region[..., None]) + shifted * region[..., None]
    elif defect == "structure":
        region = _blob(rng, size, centre, size * rng.uniform(0.08, 0.13))
        other = TEXTURE_RENDERERS[category](rng, size)
        other = cv2.warpAffine(other, cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(25, 65), 1.0),
                               (size, size), borderMode=cv2.BORDER_REFLECT)
        other = other - other.mean((0, 1)) + image.mean((0, 1))  # same mean colour: invisible to brightness
        region = cv2.GaussianBlur(region, (3, 3), 0)
        out = image * (1 - region[..., None]) + other * region[..., None]
    elif defect == "missing":
        if fg is None:
            raise ValueError("the 'missing' defect needs an object category")
        region = _blob(rng, size, centre, size * rng.uniform(0.06, 0.09)) * (fg > 0.5)
        background = cv2.inpaint(np.clip(image * 255, 0, 255).astype(np.uint8), (fg > 0.05).astype(np.uint8) * 255,
                                 5, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
        region = cv2.GaussianBlur(region.astype(np.float32), (3, 3), 0)
        out = image * (1 - region[..., None]) + background * region[..., None]
    else:
        raise ValueError(f"unknown SynthTex defect {defect!r}")
    mask = (region > 0.25).astype(np.uint8) * 255
    return np.clip(out, 0, 1).astype(np.float32), mask


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
