"""Letterbox and training augmentation (flip, HSV, random affine, mosaic) for image + mask + boxes.

Every random choice of a sample is drawn once into an :class:`AugmentDraw` (from a generator seeded by
seed, epoch and index). The flips, the affine (optionally projective) and the mosaic crop are folded into
one 3x3 matrix that is applied with the same call to the image (bilinear, border 114) and the mask
(nearest, border 0), and to the box corners, so X, M and therefore the teacher's view X_M stay
pixel-aligned (DESIGN "Data flow" 2-3). HSV changes the image only. Mixup (only on mosaic samples, as
in the reference recipes) blends two samples' images and takes the union of their masks and boxes.

Coordinates: boxes and matrices use continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``);
OpenCV's warpAffine works on pixel-centre indices, so the matrix is conjugated by a half-pixel shift
before warping (:func:`to_index_matrix`) — this is what makes a horizontal flip map ``x -> S - x`` for
boxes and column ``j -> S-1-j`` for pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (YOLO-style hyper-parameter names). Probabilities are in [0, 1]."""

    hsv_h: float = 0.015  # hue gain amplitude (fraction)
    hsv_s: float = 0.7  # saturation gain amplitude
    hsv_v: float = 0.4  # value gain amplitude
    degrees: float = 0.0  # rotation range +/- degrees
    translate: float = 0.1  # translation range +/- fraction of imgsz
    scale: float = 0.5  # zoom range: gain in [1 - scale, 1 + scale]
    shear: float = 0.0  # shear range +/- degrees
    perspective: float = 0.0  # perspective range +/- (per px; 0 = affine only)
    fliplr: float = 0.5  # probability of a horizontal flip
    flipud: float = 0.0  # probability of a vertical flip
    mosaic: float = 1.0  # probability of a 4-image mosaic (the datamodule's ``mosaic`` arg overrides it)
    mixup: float = 0.0  # probability of blending a mosaic sample with another mosaic sample (masks: union)
    min_box_size: float = 2.0  # boxes narrower/lower than this (px) after augmentation are dropped
    min_area_ratio: float = 0.1  # ... or keeping less than this fraction of their (scaled) area
    max_aspect_ratio: float = 20.0  # ... or thinner than this

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> AugmentConfig:
        values = dict(values or {})
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"data.augment: unknown key(s) {unknown}; allowed: {sorted(known)}")
        config = cls(**{key: float(value) for key, value in values.items()})
        for name in ("fliplr", "flipud", "mosaic", "mixup"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise ValueError(f"data.augment.{name}={getattr(config, name)} must be a probability in [0, 1]")
        if not 0.0 <= config.scale < 1.0:
            raise ValueError(f"data.augment.scale={config.scale} must be in [0, 1)")
        return config


@dataclass(frozen=True)
class AugmentDraw:
    """All random choices of one training sample."""

    matrix: np.ndarray  # float64 [3, 3]: canvas -> output, continuous coords, flips included (projective
    # only when perspective > 0)
    hsv_gains: np.ndarray  # float64 [3]: multiplicative H, S, V gains
    flip_lr: bool
    flip_ud: bool
    mosaic_indices: tuple[int, ...] = ()  # the 3 partner samples when this sample is a mosaic
    mosaic_center: tuple[int, int] | None = None  # (xc, yc) on the 2S x 2S mosaic canvas
    mixup_index: int | None = None  # partner sample blended in (itself drawn as a mosaic)
    mixup_ratio: float = 1.0  # weight of this sample in the blend
    mixup_draw: AugmentDraw | None = None  # the partner's own draw (a mosaic, from the same generator)

    @property
    def is_mosaic(self) -> bool:
        return bool(self.mosaic_indices)


# ----------------------------------------------------------------------------------------------
# geometry helpers


def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def to_index_matrix(matrix: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine -> the equivalent on pixel-centre indices (what cv2.warpAffine uses)."""
    return translation(-0.5, -0.5) @ matrix @ translation(0.5, 0.5)


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that max(h, w) == size, keeping the aspect ratio (area filter when shrinking)."""
    height, width = image.shape[:2]
    ratio = size / max(height, width)
    if ratio == 1.0:
        return image
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    interpolation = cv2.INTER_AREA if ratio < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def letterbox(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Centre an image that fits in size x size on a 114-grey canvas (mask padded with False).
    Returns (image, mask, pad_x, pad_y); the image must already have max(h, w) <= size."""
    height, width = image.shape[:2]
    if height > size or width > size:
        raise ValueError(f"letterbox: image {width}x{height} does not fit in {size}x{size}; resize it first")
    pad_x, pad_y = (size - width) // 2, (size - height) // 2
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    canvas[pad_y : pad_y + height, pad_x : pad_x + width] = image
    mask_canvas = np.zeros((size, size), bool)
    mask_canvas[pad_y : pad_y + height, pad_x : pad_x + width] = mask
    return canvas, mask_canvas, pad_x, pad_y


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def is_affine(matrix: np.ndarray) -> bool:
    return bool(np.allclose(matrix[2], [0.0, 0.0, 1.0]))


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Axis-aligned bounds of the 4 transformed corners of each xyxy box (homogeneous divide)."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float64)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1]), np.stack([x2, y1]), np.stack([x1, y2]), np.stack([x2, y2])])  # [4,2,N]
    xs = matrix[0, 0] * corners[:, 0] + matrix[0, 1] * corners[:, 1] + matrix[0, 2]
    ys = matrix[1, 0] * corners[:, 0] + matrix[1, 1] * corners[:, 1] + matrix[1, 2]
    ws = matrix[2, 0] * corners[:, 0] + matrix[2, 1] * corners[:, 1] + matrix[2, 2]
    xs, ys = xs / ws, ys / ws
    return np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], axis=1)


# ----------------------------------------------------------------------------------------------
# drawing


def draw_augmentation(
    rng: np.random.Generator,
    config: AugmentConfig,
    size: int,
    use_mosaic: bool = False,
    dataset_length: int = 1,
    use_mixup: bool = False,
) -> AugmentDraw:
    """Draw every random choice of one sample (fixed draw order -> reproducible for a given rng)."""
    mosaic_indices: tuple[int, ...] = ()
    mosaic_center = None
    if use_mosaic:
        mosaic_indices = tuple(int(i) for i in rng.integers(0, dataset_length, size=3))
        low, high = size // 2, 3 * size // 2
        mosaic_center = (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))
    canvas = 2 * size if use_mosaic else size
    centre = translation(-canvas / 2, -canvas / 2)
    perspective = np.eye(3)
    perspective[2, 0] = rng.uniform(-config.perspective, config.perspective)
    perspective[2, 1] = rng.uniform(-config.perspective, config.perspective)
    angle = rng.uniform(-config.degrees, config.degrees)
    zoom = rng.uniform(1 - config.scale, 1 + config.scale)
    rotate_scale = np.eye(3)
    rotate_scale[:2] = cv2.getRotationMatrix2D((0.0, 0.0), angle, zoom)
    shear = np.eye(3)
    shear[0, 1] = math.tan(math.radians(rng.uniform(-config.shear, config.shear)))
    shear[1, 0] = math.tan(math.radians(rng.uniform(-config.shear, config.shear)))
    move = translation(
        rng.uniform(0.5 - config.translate, 0.5 + config.translate) * size,
        rng.uniform(0.5 - config.translate, 0.5 + config.translate) * size,
    )
    matrix = move @ shear @ rotate_scale @ perspective @ centre
    flip_lr = bool(rng.random() < config.fliplr)
    flip_ud = bool(rng.random() < config.flipud)
    if flip_lr:
        matrix = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ matrix
    if flip_ud:
        matrix = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, size], [0.0, 0.0, 1.0]]) @ matrix
    hsv_gains = rng.uniform(-1, 1, 3) * np.array([config.hsv_h, config.hsv_s, config.hsv_v]) + 1.0
    mixup_index = None
    mixup_ratio = 1.0
    if use_mosaic and use_mixup:
        mixup_index = int(rng.integers(0, dataset_length))
        mixup_ratio = float(rng.beta(32.0, 32.0))  # the usual mixup ratio distribution, centred on 0.5
    return AugmentDraw(
        matrix, hsv_gains, flip_lr, flip_ud, mosaic_indices, mosaic_center, mixup_index, mixup_ratio
    )


# ----------------------------------------------------------------------------------------------
# applying


def compose_mosaic(
    tiles: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    center: tuple[int, int],
    size: int,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Place 4 (image, mask, boxes_px) tiles around ``center`` on a 2S x 2S canvas (top-left,
    top-right, bottom-left, bottom-right), cropping what falls off. Returns canvas image, canvas mask,
    per-tile boxes on the canvas clipped to the visible part, and their unclipped areas."""
    canvas_size = 2 * size
    xc, yc = center
    canvas = np.full((canvas_size, canvas_size, 3), PAD_VALUE, np.uint8)
    mask_canvas = np.zeros((canvas_size, canvas_size), bool)
    placed_boxes: list[np.ndarray] = []
    reference_areas: list[np.ndarray] = []
    for position, (image, mask, boxes) in enumerate(tiles):
        height, width = image.shape[:2]
        # top-left corner of the tile on the canvas
        x0 = xc - width if position in (0, 2) else xc
        y0 = yc - height if position in (0, 1) else yc
        cx1, cy1 = max(x0, 0), max(y0, 0)
        cx2, cy2 = min(x0 + width, canvas_size), min(y0 + height, canvas_size)
        if cx2 > cx1 and cy2 > cy1:
            canvas[cy1:cy2, cx1:cx2] = image[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
            mask_canvas[cy1:cy2, cx1:cx2] = mask[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
        shifted = boxes.astype(np.float64) + np.array([x0, y0, x0, y0], np.float64)
        reference_areas.append(box_areas(shifted))
        shifted[:, [0, 2]] = np.clip(shifted[:, [0, 2]], cx1, max(cx1, cx2))
        shifted[:, [1, 3]] = np.clip(shifted[:, [1, 3]], cy1, max(cy1, cy2))
        placed_boxes.append(shifted)
    return canvas, mask_canvas, placed_boxes, reference_areas


def warp_sample(
    image: np.ndarray,
    mask: np.ndarray,
    boxes: np.ndarray,
    reference_areas: np.ndarray,
    matrix: np.ndarray,
    size: int,
    config: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Apply one matrix to image (bilinear, border 114), mask (nearest, border 0) and boxes (corners ->
    bounds -> clip -> drop tiny/mostly-cut/thin). Returns image, mask, boxes [K, 4], keep [N] bool."""
    index_matrix = to_index_matrix(matrix)
    if image.shape[:2] != (size, size) or not np.allclose(matrix, np.eye(3)):
        if is_affine(matrix):
            warp, index_matrix = cv2.warpAffine, index_matrix[:2]
        else:
            warp = cv2.warpPerspective
        image = warp(image, index_matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
        mask = warp(
            mask.astype(np.uint8), index_matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0
        ).astype(bool)
    transformed = transform_boxes(boxes, matrix)
    clipped = np.clip(transformed, 0.0, float(size))
    width = clipped[:, 2] - clipped[:, 0]
    height = clipped[:, 3] - clipped[:, 1]
    scaled_reference = reference_areas * abs(np.linalg.det(matrix[:2, :2]))
    with np.errstate(divide="ignore", invalid="ignore"):
        area_ratio = width * height / np.maximum(scaled_reference, 1e-9)
        aspect = np.maximum(width / np.maximum(height, 1e-9), height / np.maximum(width, 1e-9))
    keep = (
        (width > config.min_box_size)
        & (height > config.min_box_size)
        & (area_ratio > config.min_area_ratio)
        & (aspect < config.max_aspect_ratio)
    )
    return image, mask, clipped[keep].astype(np.float32), keep


def apply_hsv(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiply hue (cyclic, OpenCV's 0..179), saturation and value by ``gains`` via lookup tables."""
    if np.allclose(gains, 1.0):
        return image
    hue, saturation, value = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    levels = np.arange(256, dtype=np.float64)
    lut_hue = np.mod(levels * gains[0], 180).astype(np.uint8)
    lut_saturation = np.clip(levels * gains[1], 0, 255).astype(np.uint8)
    lut_value = np.clip(levels * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(saturation, lut_saturation), cv2.LUT(value, lut_value)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
