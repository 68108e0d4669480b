"""SynthPipes damage on the pipes (labelled: corrosion, damaged insulation, dents) and unlabelled look-alike distractors on background objects."""

from __future__ import annotations

import math

import cv2
import numpy as np

from fgkd.data.synth import draw
from fgkd.data.synth.synthpipes.scene import _geometric, _pipe_frame, _Scene
from fgkd.data.synth.synthpipes.settings import _RUST, CLASS_NAMES, SynthPipesSettings, _jitter, _pick


# --------------------------------------------------------------------------------------------- damages
def _patch(scene: _Scene, centre, extent: float, below: float = 0.0):
    box = draw.clip_box(centre[0] - extent, centre[1] - extent, centre[0] + extent, centre[1] + extent + below,
                        scene.width, scene.height)
    return box


def _local(box, centre, t):
    xs, ys = draw.pixel_grid(box)
    rx, ry = xs - np.float32(centre[0]), ys - np.float32(centre[1])
    a = rx * np.float32(t[0]) + ry * np.float32(t[1])
    b = rx * np.float32(-t[1]) + ry * np.float32(t[0])
    return a, b


def _surface_shade(scene: _Scene, box, on_pipe: bool) -> np.ndarray:
    """Brightness of the underlying surface: the pipe's cylindrical shading, or the local background level."""
    x0, y0, x1, y1 = box
    if on_pipe:
        v = scene.pipe_v[y0:y1, x0:x1]
        return (0.55 + 0.55 * np.sqrt(np.clip(1 - v * v, 0, 1))).astype(np.float32)
    lum = scene.canvas[y0:y1, x0:x1].mean(axis=2)
    return np.clip(0.5 + 0.8 * lum, 0.5, 1.2).astype(np.float32)


def _corrosion(scene, rng, centre, t, half_len, half_wid, allowed_fn, on_pipe):
    drip = half_wid * rng.uniform(1.0, 3.0) if rng.random() < 0.6 else 0.0
    box = _patch(scene, centre, max(half_len, half_wid) * 1.3 + 2, below=drip)
    if box is None:
        return None
    a, b = _local(box, centre, t)
    field = np.zeros(a.shape, np.float32)
    for _ in range(int(rng.integers(3, 8))):
        ca, cb = rng.uniform(-0.6, 0.6) * half_len, rng.uniform(-0.6, 0.6) * half_wid
        sa, sb = half_len * rng.uniform(0.25, 0.6), half_wid * rng.uniform(0.25, 0.6)
        field += np.exp(-(((a - ca) / sa) ** 2 + ((b - cb) / sb) ** 2))
    h, w = a.shape
    noise = draw.smooth_noise(rng, h, w, max(2.0, min(half_len, half_wid) / 2.5))
    field = field * (1 + 0.5 * noise) + 0.08 * noise  # irregular edge, no speckles far from the stain
    # soft stain: a faint halo around a dense core
    stain = np.clip((field - 0.35) / 0.3, 0, 1)
    spot = stain > 0.3
    x0, y0, x1, y1 = box
    streaks = np.zeros((h, w), np.uint8)
    if drip > 0 and spot.any():
        rows, cols = np.nonzero(spot)
        for _ in range(int(rng.integers(2, 7))):
            k = int(rng.integers(rows.size))
            length = drip * rng.uniform(0.4, 1.0)
            thick = max(1, int(round(half_wid * rng.uniform(0.05, 0.15))))
            cv2.line(streaks, (int(cols[k]), int(rows[k])), (int(cols[k] + rng.normal(0, 1)), int(rows[k] + length)),
                     255, thick, cv2.LINE_8)
    allowed = allowed_fn(box)
    pixels = (spot | (streaks > 0)) & allowed
    if not pixels.any():
        return None
    rust = _jitter(rng, _pick(rng, _RUST), 0.06)
    texture = draw.smooth_noise(rng, h, w, max(1.5, half_wid / 4))
    core = np.clip((field - 0.75) * 1.5, 0, 1)
    colour = rust * ((0.85 + 0.2 * texture - 0.25 * core) * _surface_shade(scene, box, on_pipe))[..., None]
    opacity = np.maximum(np.minimum(stain, 0.55 + 0.4 * core) * spot, 0.5 * (streaks > 0)) * pixels
    draw.blend(scene.canvas, box, opacity.astype(np.float32), np.clip(colour, 0, 1))
    return box, pixels


def _torn(scene, rng, centre, t, half_len, half_wid, allowed_fn, on_pipe):
    outline = draw.ragged_outline(rng, centre, t, half_len, half_wid, vertices=int(rng.integers(28, 64)),
                                  roughness=rng.uniform(0.2, 0.45))
    box = _patch(scene, centre, max(half_len, half_wid) * 1.7 + 3)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    hole = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(hole, [np.round((outline - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
    allowed = allowed_fn(box)
    hole_px = (hole > 0) & allowed
    if not hole_px.any():
        return None
    rim_w = max(1, int(round(half_wid * 0.08)))
    rim = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_w + 1, 2 * rim_w + 1))) > 0
    rim &= ~(hole > 0) & allowed
    inside = _pick(rng, ("wool", "foam", "bare", "wool"))
    base = {"wool": (0.62, 0.52, 0.30), "foam": (0.18, 0.18, 0.19), "bare": (0.36, 0.24, 0.15)}[inside]
    h, w = hole.shape
    fibres = draw.smooth_noise(rng, h, w, max(1.0, half_wid / 6))
    depth = cv2.distanceTransform(hole, cv2.DIST_L2, 3)
    recess = 0.45 + 0.55 * np.clip(depth / max(1.0, half_wid * 0.35), 0, 1)  # cladding edge shadows the hole
    brightness = (0.8 + 0.25 * fibres) * recess * _surface_shade(scene, box, on_pipe)
    colour = _jitter(rng, base, 0.08) * brightness[..., None]
    draw.blend(scene.canvas, box, hole_px.astype(np.float32), np.clip(colour, 0, 1))
    region = scene.canvas[y0:y1, x0:x1]
    region[rim] = np.clip(region[rim] * 1.25 + 0.12, 0, 1)  # bent, light-catching sheet edge
    pixels = hole_px | rim
    if rng.random() < 0.4:  # a torn flap of cladding hanging off one side
        side = rng.choice([-1, 1])
        n = np.array([-t[1], t[0]])
        root = np.asarray(centre) + side * n * half_wid * 0.8
        tip = root + side * n * half_wid * rng.uniform(0.5, 1.0) + t * half_len * rng.uniform(-0.6, 0.6)
        flap = np.stack([root - t * half_len * 0.5, root + t * half_len * 0.5, tip])
        patch = np.zeros_like(hole)
        cv2.fillPoly(patch, [np.round((flap - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
        flap_px = (patch > 0) & allowed & ~hole_px
        region[flap_px] = np.clip(region[flap_px] * 0.75 + 0.05, 0, 1)
        pixels |= flap_px
    return box, pixels


def _dent(scene, rng, centre, t, half_len, half_wid, allowed_fn, on_pipe):
    box = _patch(scene, centre, max(half_len, half_wid) * 1.6 + 2)
    if box is None:
        return None
    a, b = _local(box, centre, t)
    sa, sb = max(half_len, 1.0), max(half_wid, 1.0)
    # compact bump (1 - q)^2 inside the ellipse q < 1: nothing outside it changes, so the box is complete
    q = np.minimum((a / sa) ** 2 + (b / sb) ** 2, 1.0)
    height = (1 - q) ** 2
    grad_a = -4 * (a / sa) * (1 - q)  # d(height)/d(a / sa)
    grad_b = -4 * (b / sb) * (1 - q)
    la = float(scene.light @ t)
    lb = float(scene.light @ np.array([-t[1], t[0]]))
    strength = rng.uniform(0.3, 0.5)
    slope = grad_a * la + grad_b * lb
    # a depression: the slope facing the light is in shade, the far rim catches a highlight
    change = strength * slope - 0.3 * height + 0.25 * np.clip(-slope, 0, None) ** 2
    if rng.random() < 0.5:  # a crease along the dent
        change -= 0.35 * height * np.exp(-((b / max(1.0, sb * 0.1)) ** 2)) * (np.abs(a) < sa * 0.8)
    allowed = allowed_fn(box)
    pixels = (q < 1) & allowed
    if not pixels.any():
        return None
    x0, y0, x1, y1 = box
    region = scene.canvas[y0:y1, x0:x1]
    # touch only the dent's own pixels (a patch-wide clip would alter bright neighbours)
    region[pixels] = np.clip(region[pixels] * (1 + change[pixels])[:, None].astype(np.float32), 0, 1)
    return box, pixels


_DAMAGE_DRAWERS = {0: _corrosion, 1: _torn, 2: _dent}


def _pixels_to_box(box, pixels) -> list[int]:
    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    x0, y0 = box[0], box[1]
    return [int(x0 + cols[0]), int(y0 + rows[0]), int(x0 + cols[-1] + 1), int(y0 + rows[-1] + 1)]


def _overlaps(candidate: list[int], boxes: list[list[int]]) -> bool:
    return any(candidate[0] < b[2] and b[0] < candidate[2] and candidate[1] < b[3] and b[1] < candidate[3]
               for b in boxes)


def _draw_damages(scene: _Scene, settings: SynthPipesSettings) -> list[dict]:
    rng = scene.rng
    if rng.random() < settings.empty_fraction:
        return []
    wanted = 1 + int(rng.choice(settings.max_damages, p=_geometric(settings.max_damages, 0.55)))
    # damage sits on the cladding face we can see: away from the silhouette edges
    sites = np.flatnonzero((scene.pipe_id > 0) & (np.abs(scene.pipe_v) < 0.7))
    damages: list[dict] = []
    boxes: list[list[int]] = []
    attempts = 0
    while len(damages) < wanted and sites.size and attempts < wanted * 6:
        attempts += 1
        site = sites[int(rng.integers(sites.size))]
        centre = np.array([site % scene.width, site // scene.width], np.float64)
        pid = int(scene.pipe_id.flat[site])
        pipe = scene.pipes[pid - 1]
        t = _pipe_frame(pipe, centre)
        cls = int(rng.choice(3, p=(0.4, 0.33, 0.27)))
        size = rng.choice(3, p=(0.35, 0.4, 0.25))  # small / medium / large, relative to the diameter
        diameter = 2 * pipe.radius
        half_len = diameter * (rng.uniform(0.12, 0.25), rng.uniform(0.25, 0.5), rng.uniform(0.5, 1.3))[size]
        half_wid = min(diameter * 0.45, half_len * rng.uniform(0.4, 1.1))
        if cls == 2:
            half_wid = min(diameter * 0.35, half_wid)
        half_len, half_wid = max(half_len, 2.5), max(half_wid, 2.0)
        footprint = [int(centre[0] - half_len * 1.2), int(centre[1] - half_len * 1.2),
                     int(centre[0] + half_len * 1.2) + 1, int(centre[1] + half_len * 1.2) + 1]
        if _overlaps(footprint, boxes):
            continue

        def on_this_pipe(box, pid=pid):
            x0, y0, x1, y1 = box
            return scene.pipe_id[y0:y1, x0:x1] == pid

        snapshot_box = _patch(scene, centre, max(half_len, half_wid) * 1.7 + 3, below=half_wid * 3.2)
        x0, y0, x1, y1 = snapshot_box
        snapshot = scene.canvas[y0:y1, x0:x1].copy()
        result = _DAMAGE_DRAWERS[cls](scene, rng, centre, t, half_len, half_wid, on_this_pipe, True)
        if result is None:
            continue
        patch_box, pixels = result
        bbox = _pixels_to_box(patch_box, pixels)
        if pixels.sum() < 6 or bbox[2] - bbox[0] < 2 or bbox[3] - bbox[1] < 2 or _overlaps(bbox, boxes):
            scene.canvas[y0:y1, x0:x1] = snapshot  # undo: it would be an unlabelled damage
            continue
        boxes.append(bbox)
        damages.append({"cls": cls, "name": CLASS_NAMES[cls], "box": bbox, "pixels": int(pixels.sum()),
                        "pipe": pid})
    return damages


def _draw_distractors(scene: _Scene, settings: SynthPipesSettings) -> list[dict]:
    """Unlabelled damage look-alikes on background objects, kept off (a dilated) pipe mask."""
    rng = scene.rng
    if settings.max_distractors == 0:
        return []
    margin = max(2, int(round(scene.short * 0.01)))
    keep_out = cv2.dilate((scene.pipe_id > 0).astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    free_mask = keep_out == 0
    on_objects = free_mask & (scene.objects > 0.5)
    if scene.horizon is not None:  # no rust in the sky
        free_mask[: int(scene.horizon)] = False
    free_all = np.flatnonzero(free_mask | on_objects)
    free_obj = np.flatnonzero(on_objects)
    wanted = int(rng.integers(1, settings.max_distractors + 1)) if rng.random() < 0.92 else 0
    out: list[dict] = []
    attempts = 0
    while len(out) < wanted and free_all.size and attempts < wanted * 4:
        attempts += 1
        free = free_obj if free_obj.size and rng.random() < 0.8 else free_all  # mostly on equipment
        site = free[int(rng.integers(free.size))]
        centre = np.array([site % scene.width, site // scene.width], np.float64)
        angle = rng.uniform(0, math.pi) if rng.random() < 0.5 else float(rng.choice([0.0, math.pi / 2]))
        t = np.array([math.cos(angle), math.sin(angle)])
        half_len = scene.px(rng.uniform(0.012, 0.06), 1.5)
        half_wid = max(1.5, half_len * rng.uniform(0.35, 1.0))
        kind = _pick(rng, ("rust", "rust", "hole", "tear", "dent") if on_objects.any() else ("rust", "hole", "tear"))

        def off_mask(box):
            x0, y0, x1, y1 = box
            return keep_out[y0:y1, x0:x1] == 0

        if kind == "hole":
            axes = (half_len * 0.5, half_wid * 0.5)
            shape = draw.ellipse_alpha(centre, axes, math.degrees(angle), scene.width, scene.height)
            if shape is None:
                continue
            box, alpha = shape
            alpha = alpha * off_mask(box)
            draw.blend(scene.canvas, box, alpha, (0.32, 0.24, 0.17))  # a rusty lip around a dark opening
            inner = draw.ellipse_alpha(centre, (axes[0] * 0.8, axes[1] * 0.8), math.degrees(angle), scene.width,
                                       scene.height)
            if inner is not None:
                draw.blend(scene.canvas, inner[0], inner[1] * off_mask(inner[0]), _jitter(rng, (0.07, 0.06, 0.06), 0.5))
            result = (box, alpha > 0)
        else:
            drawer = {"rust": _corrosion, "tear": _torn, "dent": _dent}[kind]
            result = drawer(scene, rng, centre, t, half_len, half_wid, off_mask, False)
        if result is None or not result[1].any():
            continue
        out.append({"kind": kind, "box": _pixels_to_box(*result), "pixels": int(result[1].sum())})
    return out
