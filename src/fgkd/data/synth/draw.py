"""Drawing primitives for the SynthPipes generator (float32 RGB canvas in [0, 1]).

Everything works on small patches (the bounding box of a shape, clipped to the canvas) and, for big
shapes, on row strips of that box, so full-resolution PDI-sized images (9504×6336) stay within a few
hundred MB. Anti-aliased coverage comes from OpenCV drawing into uint8 patches: OpenCV only
anti-aliases 8-bit images (LINE_AA silently degrades to LINE_8 on float32).
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 polygon/line coordinates
_ONE = 1 << _SHIFT
STRIP_PIXELS = 1 << 21  # at most ~2 MPx of float temporaries per strip


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance value noise with feature size ``cell`` pixels (float32 [h, w])."""
    grid_h = max(2, int(np.ceil(height / max(cell, 1.0))) + 1)
    grid_w = max(2, int(np.ceil(width / max(cell, 1.0))) + 1)
    grid = rng.standard_normal((grid_h, grid_w)).astype(np.float32)
    return cv2.resize(grid, (max(1, width), max(1, height)), interpolation=cv2.INTER_CUBIC)


def clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer pixel box [x0, x1) × [y0, y1) clipped to the canvas; None when empty."""
    ix0, iy0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    ix1, iy1 = min(width, int(np.ceil(x1)) + 1), min(height, int(np.ceil(y1)) + 1)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return ix0, iy0, ix1, iy1


def strips(box: tuple[int, int, int, int]) -> Iterator[tuple[int, int, int, int]]:
    """Split a box into row strips of at most STRIP_PIXELS pixels."""
    x0, y0, x1, y1 = box
    rows = max(1, STRIP_PIXELS // max(1, x1 - x0))
    for ys in range(y0, y1, rows):
        yield x0, ys, x1, min(y1, ys + rows)


def pixel_grid(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (xs [1, w], ys [h, 1]) of a box, float32, broadcastable."""
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    return xs, ys


def blend(canvas: np.ndarray, box: tuple[int, int, int, int], alpha: np.ndarray, colour) -> None:
    """canvas[box] = canvas·(1-α) + colour·α; colour is an RGB triple or an [h, w, 3] array."""
    x0, y0, x1, y1 = box
    region = canvas[y0:y1, x0:x1]
    a = alpha[..., None]
    region *= 1.0 - a
    region += a * np.asarray(colour, dtype=np.float32)


def _to_fixed(points: np.ndarray, x0: int, y0: int) -> np.ndarray:
    return np.round((np.asarray(points, np.float64) - (x0, y0)) * _ONE).astype(np.int32)


def polygon_alpha(points, width: int, height: int, pad: int = 2):
    """Anti-aliased coverage of a filled polygon: (box, alpha float32 [h, w]) or None when off-canvas."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    box = clip_box(pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad,
                   width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(patch, [_to_fixed(pts, x0, y0)], 255, cv2.LINE_AA, _SHIFT)
    return box, patch.astype(np.float32) * (1.0 / 255.0)


def polyline_alpha(points, thickness: float, width: int, height: int, closed: bool = False):
    """Anti-aliased coverage of a (thin) polyline: (box, alpha) or None."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    pad = thickness + 2
    box = clip_box(pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad,
                   width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.polylines(patch, [_to_fixed(pts, x0, y0)], closed, 255, max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)
    return box, patch.astype(np.float32) * (1.0 / 255.0)


def segments_alpha(segments, thickness: float, width: int, height: int):
    """Anti-aliased coverage of many straight segments [(x0, y0, x1, y1), ...] drawn in one patch."""
    segs = np.asarray(segments, np.float64).reshape(-1, 2, 2)
    if segs.size == 0:
        return None
    pad = thickness + 2
    pts = segs.reshape(-1, 2)
    box = clip_box(pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad,
                   width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.polylines(patch, [_to_fixed(seg, x0, y0) for seg in segs], False, 255, max(1, int(round(thickness))),
                  cv2.LINE_AA, _SHIFT)
    return box, patch.astype(np.float32) * (1.0 / 255.0)


def ellipse_alpha(centre, axes, angle_deg: float, width: int, height: int, thickness: int = -1):
    """Anti-aliased coverage of an ellipse (filled when thickness < 0): (box, alpha) or None."""
    rx, ry = max(axes[0], 0.5), max(axes[1], 0.5)
    ext = max(rx, ry) + max(thickness, 0) + 2
    box = clip_box(centre[0] - ext, centre[1] - ext, centre[0] + ext, centre[1] + ext, width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
    c = (int(round((centre[0] - x0) * _ONE)), int(round((centre[1] - y0) * _ONE)))
    ax = (int(round(rx * _ONE)), int(round(ry * _ONE)))
    cv2.ellipse(patch, c, ax, angle_deg, 0, 360, 255, thickness, cv2.LINE_AA, _SHIFT)
    return box, patch.astype(np.float32) * (1.0 / 255.0)


def rect_points(centre, direction, length: float, thickness: float) -> np.ndarray:
    """Corners of a rotated rectangle centred at ``centre`` with long axis ``direction`` (unit vector)."""
    c = np.asarray(centre, np.float64)
    t = np.asarray(direction, np.float64)
    n = np.array([-t[1], t[0]])
    hl, hw = length / 2.0, thickness / 2.0
    return np.stack([c - t * hl - n * hw, c + t * hl - n * hw, c + t * hl + n * hw, c - t * hl + n * hw])


def draw_bar(canvas: np.ndarray, p0, p1, thickness: float, colour, profile: str = "cylinder",
             light: float = 0.0, alpha_out: np.ndarray | None = None, opacity: float = 1.0) -> None:
    """A straight shaded bar from p0 to p1 (tube, beam, column, tank body).

    ``profile`` sets the brightness across the bar: "cylinder" (Lambert on a round surface lit from
    ``light`` ∈ [-1, 1] across), "ibeam" (flat web with darker flanges), "flat". ``alpha_out`` (float32
    [H, W]) receives max(coverage) so callers can build occluder masks.
    """
    height, width = canvas.shape[:2]
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    length = float(np.hypot(*(p1 - p0)))
    if length < 1e-6:
        return
    if thickness < 3.5:  # too thin for visible shading: one anti-aliased OpenCV line is much cheaper
        paint(canvas, polyline_alpha(np.stack([p0, p1]), thickness, width, height),
              np.asarray(colour, np.float32) * 0.9, opacity, alpha_out)
        return
    t = (p1 - p0) / length
    n = np.array([-t[1], t[0]])
    half = thickness / 2.0
    corners = rect_points((p0 + p1) / 2, t, length, thickness)
    box = clip_box(corners[:, 0].min() - 1, corners[:, 1].min() - 1, corners[:, 0].max() + 1,
                   corners[:, 1].max() + 1, width, height)
    if box is None:
        return
    base = np.asarray(colour, np.float32)
    for strip in strips(box):
        xs, ys = pixel_grid(strip)
        rx, ry = xs - np.float32(p0[0]), ys - np.float32(p0[1])
        along = rx * np.float32(t[0]) + ry * np.float32(t[1])
        across = rx * np.float32(n[0]) + ry * np.float32(n[1])
        cov = np.clip(half - np.abs(across) + 0.5, 0, 1) * np.clip(np.minimum(along + 0.5, length - along + 0.5), 0, 1)
        if not cov.any():
            continue
        v = np.clip(across / max(half, 0.5), -1, 1)
        if profile == "cylinder":
            theta = np.arcsin(v)
            highlight = 0.25 * np.exp(-((theta - light) / 0.25) ** 2)
            shade = 0.35 + 0.75 * np.maximum(0, np.cos(theta - light * 1.1)) + highlight
        elif profile == "ibeam":
            shade = np.where(np.abs(v) > 0.78, 0.65, 1.0 + 0.08 * light * v)
        else:
            shade = np.ones_like(v)
        colour_arr = base * shade[..., None].astype(np.float32)
        a = cov.astype(np.float32) * opacity
        blend(canvas, strip, a, colour_arr)
        if alpha_out is not None:
            sx0, sy0, sx1, sy1 = strip
            np.maximum(alpha_out[sy0:sy1, sx0:sx1], a, out=alpha_out[sy0:sy1, sx0:sx1])


def paint(canvas: np.ndarray, shape, colour, opacity: float = 1.0, alpha_out: np.ndarray | None = None) -> None:
    """Blend a (box, alpha) shape from the *_alpha helpers onto the canvas with a flat colour."""
    if shape is None:
        return
    box, alpha = shape
    a = alpha * np.float32(opacity)
    blend(canvas, box, a, colour)
    if alpha_out is not None:
        x0, y0, x1, y1 = box
        np.maximum(alpha_out[y0:y1, x0:x1], a, out=alpha_out[y0:y1, x0:x1])


def ragged_outline(rng: np.random.Generator, centre, direction, half_len: float, half_wid: float,
                   vertices: int = 48, roughness: float = 0.35) -> np.ndarray:
    """A closed irregular outline (torn edge) around an ellipse in the frame (direction, normal)."""
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radius = np.ones(vertices)
    for harmonic in range(2, 7):  # low harmonics give the lobes, jitter gives the jagged tear
        radius += roughness / harmonic * rng.uniform(0.3, 1.0) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radius += rng.uniform(-roughness, roughness, vertices) * 0.5
    radius = np.clip(radius, 0.35, 1.6)
    t = np.asarray(direction, np.float64)
    n = np.array([-t[1], t[0]])
    along = np.cos(angles) * half_len * radius
    across = np.sin(angles) * half_wid * radius
    return np.asarray(centre, np.float64) + along[:, None] * t + across[:, None] * n
