"""SynthPipes rendering of one image: scene, pipes, damage, distractors, photo effects; YOLO label lines."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from fgkd.data.synth import draw
from fgkd.data.synth.synthpipes.clutter import _draw_background, _draw_occluders, _soft_resize
from fgkd.data.synth.synthpipes.damage import _draw_damages, _draw_distractors
from fgkd.data.synth.synthpipes.scene import _make_pipes, _Scene
from fgkd.data.synth.synthpipes.settings import PDI_SIZES, SynthPipesSettings, SynthSample


# --------------------------------------------------------------------------------------------- photo effects
def _photo_effects(scene: _Scene, info: dict) -> np.ndarray:
    rng, canvas = scene.rng, scene.canvas
    h, w = canvas.shape[:2]
    if rng.random() < 0.35:  # cast shadows from structure out of frame (soft, so drawn at <= 512 px)
        scale = min(1.0, 512 / max(h, w))
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        shadow = np.zeros((sh, sw), np.float32)
        for _ in range(int(rng.integers(1, 3))):
            angle = rng.uniform(0.3, 1.2) * rng.choice([-1, 1])
            c = scene.random_point() * scale
            d = np.array([math.cos(angle), math.sin(angle)])
            pts = draw.rect_points(c, d, float(np.hypot(sw, sh)) * 2, scene.px(rng.uniform(0.05, 0.3)) * scale)
            shape = draw.polygon_alpha(pts, sw, sh)
            if shape is not None:
                (x0, y0, x1, y1), alpha = shape
                np.maximum(shadow[y0:y1, x0:x1], alpha, out=shadow[y0:y1, x0:x1])
        shadow = _soft_resize(shadow, w, h, scene.px(0.006))
        darkness = np.float32(rng.uniform(0.25, 0.45))
        for _x0, y0, _x1, y1 in draw.strips((0, 0, w, h)):
            canvas[y0:y1] *= (1 - darkness * shadow[y0:y1])[..., None]
    # illumination gradient, exposure, white balance and haze, applied strip by strip (bounded memory)
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    slope = rng.uniform(0.1, 0.45)
    gain = (rng.uniform(0.85, 1.12) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    haze = rng.uniform(0.05, 0.2) if info.get("outdoor") and rng.random() < 0.3 else 0.0
    sky = np.asarray(scene.sky if scene.sky is not None else (0.8, 0.8, 0.8), np.float32)
    strips = list(draw.strips((0, 0, w, h)))
    for _x0, y0, _x1, y1 in strips:
        ramp = 1 + slope * (xs * math.cos(angle) + ys[y0:y1] * math.sin(angle))
        canvas[y0:y1] *= ramp[..., None] * gain
        if haze:
            canvas[y0:y1] = canvas[y0:y1] * (1 - haze) + sky * haze
    sigma = rng.uniform(0.0, 0.9) * max(1.0, max(h, w) / 1000)
    if sigma > 0.3:
        cv2.GaussianBlur(canvas, (0, 0), sigma, dst=canvas)
    noise_sigma = np.float32(rng.uniform(0.004, 0.018))
    image = np.empty((h, w, 3), np.uint8)
    for _x0, y0, _x1, y1 in strips:
        noisy = canvas[y0:y1] + rng.standard_normal((y1 - y0, w, 3), dtype=np.float32) * noise_sigma
        image[y0:y1] = np.clip(noisy * 255.0 + 0.5, 0, 255)
    return image


# --------------------------------------------------------------------------------------------- one sample
def image_size(index: int, settings: SynthPipesSettings) -> tuple[tuple[int, int], tuple[int, int]]:
    """((width, height) written, (width, height) of the PDI camera frame it stands for) for image ``index``."""
    rng = np.random.default_rng([settings.seed, 2, index])
    width, height = PDI_SIZES[int(rng.integers(len(PDI_SIZES)))]
    if rng.random() < settings.portrait_prob:
        width, height = height, width
    if settings.full_size:
        return (width, height), (width, height)
    scale = settings.max_side / max(width, height)
    return (max(1, int(round(width * scale))), max(1, int(round(height * scale)))), (width, height)


def render_sample(index: int, settings: SynthPipesSettings | None = None, **overrides) -> SynthSample:
    """Draw image ``index`` in memory (no files); same pixels as the dataset writer (before JPEG)."""
    if settings is None:
        settings = SynthPipesSettings.from_kwargs(**overrides)
    elif overrides:
        settings = dataclasses.replace(settings, **overrides)
    (width, height), source = image_size(index, settings)
    # one stream per stage, so e.g. switching damages off leaves every other pixel as it was
    scene_rng, damage_rng, distractor_rng, photo_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([settings.seed, 1, index]).spawn(4))
    scene = _Scene(scene_rng, width, height)
    background = _draw_background(scene)
    pipes = _make_pipes(scene, settings)
    occluders = _draw_occluders(scene) if scene_rng.random() < settings.occlusion_prob else []
    scene.rng = damage_rng
    damages = _draw_damages(scene, settings)
    scene.rng = distractor_rng
    distractors = _draw_distractors(scene, settings)
    scene.rng = photo_rng
    image = _photo_effects(scene, background)
    mask = np.where(scene.pipe_id > 0, 255, 0).astype(np.uint8)
    boxes = np.asarray([d["box"] for d in damages], np.float32).reshape(-1, 4)
    classes = np.asarray([d["cls"] for d in damages], np.int64)
    meta = {"index": index, "width": width, "height": height, "source_size": list(source),
            "outdoor": bool(background["outdoor"]), "pipes": pipes, "occluders": occluders, "damages": damages,
            "distractors": distractors, "mask_fraction": round(float((mask > 0).mean()), 4)}
    return SynthSample(image=image, mask=mask, boxes=boxes, classes=classes, meta=meta)


def yolo_lines(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> list[str]:
    """'cls cx cy w h' lines, normalised to [0, 1]."""
    lines = []
    for (x1, y1, x2, y2), cls in zip(boxes.tolist(), classes.tolist(), strict=True):
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return lines
