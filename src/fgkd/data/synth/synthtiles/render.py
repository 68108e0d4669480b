"""SynthTiles rendering: magnetic-tile-like grey images and their defects with anti-aliased pixel masks.

What MTD's images look like (anomaly.md §3.3): 8-bit gray crops of curved ferrite tiles, low contrast, a fine
grinding texture of near-parallel streaks, uneven lighting, widths and heights that vary (aspect ratios
0.37–2.68). A normal image here: a cylindrical shading across the tile (``1 − k·u²``), grinding streaks
(noise smeared along one slightly bent direction), a low-frequency lighting field and a gain, sensor noise;
sometimes a dark chamfer band at one edge. Defects, kept near the surface's own contrast:

* ``Blowhole``: 1–3 small round pits (darker core, faint bright rim);
* ``Break``: a chipped edge or corner (a polygon from the border replaced by the dark background);
* ``Crack``: a thin, bent, darker line (sometimes with a branch);
* ``Fray``: a ragged band along one edge with a rough, darker surface;
* ``Uneven``: a large smooth region of changed brightness whose grinding streaks run another way.

Masks are anti-aliased 0..255 (as MTD's; the loader thresholds at > 127). Every image has its own seeded
generator (``(seed, class, index)``), so one image never depends on how many others were drawn.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from fgkd.data.synth.draw import smooth_noise

NORMAL = "MT_Free"
DEFECTS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def image_size(rng: np.random.Generator, height: int, aspect: tuple[float, float]) -> tuple[int, int]:
    """``(h, w)``: the height ±25 %, the width from an aspect ratio drawn log-uniformly in ``aspect``."""
    h = int(round(height * rng.uniform(0.75, 1.25)))
    ratio = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]))))
    return h, max(16, int(round(h * ratio)))


def grinding(rng: np.random.Generator, h: int, w: int, angle: float) -> np.ndarray:
    """Zero-mean, unit-variance streaks along ``angle`` (radians), slightly bent."""
    side = int(np.ceil(np.hypot(h, w))) + 4
    noise = rng.standard_normal((side, side)).astype(np.float32)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=rng.uniform(6, 12), sigmaY=0.7)
    bend = smooth_noise(rng, 1, side, side / 2)[0] * rng.uniform(1, 4)  # a row shift that varies along x
    map_x, map_y = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))
    streaks = cv2.remap(streaks, map_x, map_y + bend[None, :], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), np.degrees(angle), 1.0)
    streaks = cv2.warpAffine(streaks, rot, (side, side), borderMode=cv2.BORDER_REFLECT)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out = streaks[y0:y0 + h, x0:x0 + w]
    return (out - out.mean()) / (out.std() + 1e-6)


def render_normal(rng: np.random.Generator, height: int, aspect: tuple[float, float]
                  ) -> tuple[np.ndarray, float, np.ndarray]:
    """``(image float32 [h, w] in [0, 1], grinding angle, surface mask)``; the surface excludes a chamfer band."""
    h, w = image_size(rng, height, aspect)
    base = rng.uniform(0.38, 0.6)
    across_x = rng.random() < 0.5
    u = np.linspace(-1, 1, w if across_x else h, dtype=np.float32)
    shade = 1 - rng.uniform(0.08, 0.25) * u ** 2
    shade = np.broadcast_to(shade[None, :] if across_x else shade[:, None], (h, w))
    angle = rng.uniform(-0.25, 0.25) + (0.0 if rng.random() < 0.7 else np.pi / 2)
    texture = grinding(rng, h, w, angle) * rng.uniform(0.025, 0.045)
    lighting = 1 + rng.uniform(0.03, 0.08) * smooth_noise(rng, h, w, max(h, w) / 2.5)
    image = (base * shade + texture) * lighting * rng.normal(1.0, 0.04)
    surface = np.ones((h, w), np.float32)
    if rng.random() < 0.35:  # a chamfer: a dark band at one edge
        side = int(rng.integers(4))
        width = max(2, int(rng.uniform(0.04, 0.1) * (w if side < 2 else h)))
        band = np.zeros((h, w), np.float32)
        band[{0: np.s_[:, :width], 1: np.s_[:, w - width:], 2: np.s_[:width, :], 3: np.s_[h - width:, :]}[side]] = 1
        band = cv2.GaussianBlur(band, (0, 0), 1.0)
        image = image * (1 - band) + rng.uniform(0.06, 0.14) * band
        surface = 1 - band
    image = image + rng.normal(0, 0.008, (h, w))
    return np.clip(image, 0, 1).astype(np.float32), float(angle), surface


def _point_on_surface(rng: np.random.Generator, surface: np.ndarray, margin: float = 0.12) -> np.ndarray:
    h, w = surface.shape
    for _ in range(50):
        p = np.array([rng.uniform(margin, 1 - margin) * w, rng.uniform(margin, 1 - margin) * h], np.float32)
        if surface[int(p[1]), int(p[0])] > 0.9:
            return p
    return np.array([w / 2, h / 2], np.float32)


def _polyline(h: int, w: int, pts: np.ndarray, thickness: int) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    cv2.polylines(canvas, [np.round(pts * 16).astype(np.int32)], False, 255, max(1, thickness), cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _blob(rng: np.random.Generator, h: int, w: int, centre: np.ndarray, radius: float, wobble: float = 0.3) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rough = 1 + wobble * smooth_noise(rng, h, w, max(radius, 2))
    return np.clip(radius * rough - np.hypot(x - centre[0], y - centre[1]) + 0.5, 0, 1)


def apply_defect(kind: str, image: np.ndarray, angle: float, surface: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(defective image, mask uint8 0..255 anti-aliased)``."""
    h, w = image.shape
    short = min(h, w)
    local = float(image[surface > 0.9].std()) if (surface > 0.9).any() else 0.05
    out = image.copy()
    if kind == "MT_Blowhole":
        region = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            c = _point_on_surface(rng, surface)
            r = rng.uniform(0.015, 0.035) * short + 1.0
            pit = _blob(rng, h, w, c, r, 0.15)
            rim = np.clip(_blob(rng, h, w, c, r + 1.5, 0.1) - pit, 0, 1)
            out = out * (1 - pit * rng.uniform(0.25, 0.45)) + rim * local * 0.8
            region = np.maximum(region, pit)
    elif kind == "MT_Break":
        corner = int(rng.integers(4))  # top-left, top-right, bottom-right, bottom-left
        cx, cy = (0 if corner in (0, 3) else w), (0 if corner in (0, 1) else h)
        angles = np.linspace(0, np.pi / 2, 7) + (np.pi / 2) * corner  # the directions into the image
        radii = rng.uniform(0.12, 0.25) * short * (1 + 0.35 * rng.standard_normal(7)).clip(0.4, 1.8)
        pts = np.vstack([[cx, cy], np.stack([cx + np.cos(angles) * radii, cy + np.sin(angles) * radii], 1)])
        pts = pts.astype(np.float32)
        canvas = np.zeros((h, w), np.uint8)
        cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        region = canvas.astype(np.float32) / 255.0
        edge = np.clip(cv2.GaussianBlur(region, (0, 0), 1.2) - region, 0, 1)
        out = out * (1 - region) + rng.uniform(0.05, 0.12) * region + edge * local * 1.5
    elif kind == "MT_Crack":
        c = _point_on_surface(rng, surface)
        length = rng.uniform(0.25, 0.55) * short
        theta = rng.uniform(0, np.pi)
        steps = np.linspace(-0.5, 0.5, 9)[:, None] * length
        d, nrm = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
        pts = c + steps * d + np.cumsum(rng.normal(0, length * 0.03, (9, 1)), 0) * nrm
        region = _polyline(h, w, pts.astype(np.float32), 1)
        if rng.random() < 0.4:
            k = int(rng.integers(2, 7))
            branch = pts[k] + np.linspace(0, 1, 5)[:, None] * length * 0.3 * (d * 0.5 + nrm * rng.choice([-1, 1]))
            region = np.maximum(region, _polyline(h, w, branch.astype(np.float32), 1))
        out = out - region * rng.uniform(0.09, 0.16)
    elif kind == "MT_Fray":
        side = int(rng.integers(4))
        depth = rng.uniform(0.08, 0.2) * (w if side in (0, 1) else h)
        along = np.arange(h if side in (0, 1) else w, dtype=np.float32)
        ragged = depth * (1 + 0.45 * smooth_noise(rng, len(along), 1, max(len(along) / 12, 2))[:, 0])
        ragged = ragged + rng.uniform(0, 2.5, len(along))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        dist = {0: x, 1: w - 1 - x, 2: y, 3: h - 1 - y}[side]
        limit = ragged[:, None] if side in (0, 1) else ragged[None, :]
        region = np.clip(limit - dist + 0.5, 0, 1)
        rough = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
        out = out * (1 - region * rng.uniform(0.1, 0.2)) + region * rough * local * 1.2
    elif kind == "MT_Uneven":
        c = _point_on_surface(rng, surface, 0.25)
        region = cv2.GaussianBlur(_blob(rng, h, w, c, rng.uniform(0.25, 0.4) * short, 0.35), (0, 0), 2.0)
        other = grinding(rng, h, w, angle + rng.uniform(0.6, 1.2)) * local
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.09)
        flat = cv2.GaussianBlur(out, (0, 0), 3.0)
        out = out * (1 - region) + (flat + other + shift) * region
    else:
        raise ValueError(f"unknown SynthTiles defect {kind!r}; choose from {', '.join(DEFECTS)}")
    mask = np.clip(np.round(region * 255), 0, 255).astype(np.uint8)
    return np.clip(out, 0, 1).astype(np.float32), mask


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
