"""SynthPipes plant clutter: backdrop, far structures, steel, scaffolding, tanks, valves, ladders, grating, cables, gauges, and occluders in front of the pipes."""

from __future__ import annotations

import math

import cv2
import numpy as np

from fgkd.data.synth import draw
from fgkd.data.synth.synthpipes.scene import _pipe_frame, _rotate, _Scene
from fgkd.data.synth.synthpipes.settings import _PAINT, _STEEL, _jitter, _pick


# --------------------------------------------------------------------------------------------- background
def _soft_resize(field: np.ndarray, width: int, height: int, sigma: float) -> np.ndarray:
    """Resize a low-frequency field to (width, height) with a Gaussian blur of ``sigma`` output px.

    The blur runs at <= 512 px (a full-resolution blur with sigma ~ 100 px would take many seconds).
    """
    scale = min(1.0, 512 / max(width, height))
    work = cv2.resize(field, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_LINEAR)
    if sigma * scale > 0.3:
        work = cv2.GaussianBlur(work, (0, 0), sigma * scale)
    return cv2.resize(work, (width, height), interpolation=cv2.INTER_LINEAR)


def _draw_backdrop(scene: _Scene) -> dict:
    rng, canvas, h, w = scene.rng, scene.canvas, scene.height, scene.width
    rows = np.arange(h, dtype=np.float32)[:, None, None]
    outdoor = rng.random() < 0.65
    if outdoor:
        overcast = rng.random() < 0.45
        top = _jitter(rng, (0.72, 0.74, 0.76) if overcast else (0.38, 0.56, 0.80), 0.06)
        bottom = _jitter(rng, (0.86, 0.86, 0.86) if overcast else (0.72, 0.80, 0.88), 0.05)
        horizon = rng.uniform(0.12, 0.55) * h
        cut = int(math.ceil(horizon))
        # soft, horizontally stretched clouds: coarse noise, upsampled and blurred
        grid = rng.standard_normal((max(2, int(cut / (scene.short * 0.1)) + 2),
                                    max(2, int(w / (scene.short * 0.3)) + 2))).astype(np.float32)
        clouds = _soft_resize(grid, w, max(cut, 1), scene.short * 0.04)[..., None]
        canvas[:cut] = top + (bottom - top) * np.clip(rows[:cut] / max(horizon, 1), 0, 1)
        canvas[:cut] *= 1 + 0.05 * clouds
        canvas[:cut] += 0.04 * np.clip(clouds, 0, None)
        ground_top = _jitter(rng, (0.46, 0.45, 0.42), 0.1)
        ground_bot = _jitter(rng, (0.32, 0.31, 0.29), 0.1)
        canvas[cut:] = ground_top + (ground_bot - ground_top) * np.clip((rows[cut:] - horizon) / max(h - horizon, 1),
                                                                        0, 1)
        scene.sky, scene.horizon = bottom, horizon
    else:
        top = _jitter(rng, _pick(rng, ((0.36, 0.36, 0.37), (0.40, 0.37, 0.33), (0.30, 0.33, 0.35))), 0.12)
        bottom = _jitter(rng, (0.24, 0.23, 0.22), 0.12)
        canvas[:] = top + (bottom - top) * rows / max(h - 1, 1)
    texture = draw.smooth_noise(rng, h, w, scene.short * 0.05)
    grain = draw.smooth_noise(rng, h, w, scene.short * 0.006)
    for _x0, y0, _x1, y1 in draw.strips((0, 0, w, h)):
        canvas[y0:y1] *= (1 + 0.04 * texture[y0:y1] + 0.03 * grain[y0:y1])[..., None]
    return {"outdoor": outdoor}


def _draw_far_structures(scene: _Scene) -> None:
    if scene.horizon is None:
        return
    rng = scene.rng
    haze = np.asarray(scene.sky) * 0.55 + 0.2
    for _ in range(int(rng.integers(2, 7))):
        x = rng.uniform(0, scene.width)
        kind = rng.random()
        base = scene.horizon + scene.px(0.05)
        if kind < 0.5:  # distillation column / stack
            width = scene.px(rng.uniform(0.015, 0.06))
            top = scene.horizon - rng.uniform(0.1, 0.6) * scene.horizon
            draw.draw_bar(scene.canvas, (x, base), (x, top), width, _jitter(rng, haze, 0.06), "cylinder",
                          light=scene.light[0], opacity=0.85)
            if rng.random() < 0.5:  # platforms around the column
                for y in np.linspace(top, base, int(rng.integers(2, 5)))[1:-1]:
                    draw.draw_bar(scene.canvas, (x - width, y), (x + width, y), scene.px(0.004),
                                  haze * 0.8, "flat", opacity=0.8)
        elif kind < 0.8:  # storage tank
            width = scene.px(rng.uniform(0.1, 0.3))
            tall = width * rng.uniform(0.4, 0.9)
            draw.draw_bar(scene.canvas, (x - width / 2, base - tall / 2), (x + width / 2, base - tall / 2), tall,
                          _jitter(rng, haze * 1.05, 0.05), "flat", opacity=0.9)
        else:  # lattice tower / flare
            width = scene.px(rng.uniform(0.01, 0.03))
            top = scene.horizon * rng.uniform(0.05, 0.5)
            for side in (-1, 1):
                draw.draw_bar(scene.canvas, (x + side * width * 2, base), (x + side * width * 0.5, top),
                              scene.px(0.004), haze * 0.75, "flat", opacity=0.8)
            for y in np.linspace(top, base, 6):
                draw.draw_bar(scene.canvas, (x - width * 2, y), (x + width * 2, y), scene.px(0.003), haze * 0.75,
                              "flat", opacity=0.7)


def _draw_steel(scene: _Scene, count: int | None = None) -> None:
    rng = scene.rng
    count = int(rng.integers(2, 8)) if count is None else count
    for _ in range(count):
        colour = _jitter(rng, _pick(rng, _STEEL), 0.08)
        thick = scene.px(rng.uniform(0.025, 0.08))
        if rng.random() < 0.5:  # column
            x = rng.uniform(0, scene.width)
            tilt = rng.normal(0, 0.04) * scene.height
            p0, p1 = (x, -thick), (x + tilt, scene.height + thick)
        else:  # beam
            y = rng.uniform(0, scene.height)
            tilt = rng.normal(0, 0.05) * scene.width
            p0, p1 = (-thick, y), (scene.width + thick, y + tilt)
        draw.draw_bar(scene.canvas, p0, p1, thick, colour, "ibeam", light=scene.light[0], alpha_out=scene.objects)


def _draw_scaffolding(scene: _Scene) -> None:
    rng = scene.rng
    colour = _jitter(rng, _pick(rng, ((0.62, 0.63, 0.64), (0.80, 0.66, 0.15), (0.75, 0.40, 0.12))), 0.06)
    x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * scene.width)
    y0, y1 = sorted(rng.uniform(-0.2, 1.2, 2) * scene.height)
    if x1 - x0 < 0.3 * scene.width:
        x1 = x0 + 0.3 * scene.width
    if y1 - y0 < 0.3 * scene.height:
        y1 = y0 + 0.3 * scene.height
    tube = scene.px(rng.uniform(0.006, 0.014))
    step_x = scene.px(rng.uniform(0.12, 0.3))
    step_y = scene.px(rng.uniform(0.1, 0.22))
    xs = np.arange(x0, x1 + 1, step_x)
    ys = np.arange(y0, y1 + 1, step_y)
    for x in xs:
        draw.draw_bar(scene.canvas, (x, y0), (x, y1), tube, colour, "cylinder", light=scene.light[0])
    for y in ys:
        draw.draw_bar(scene.canvas, (x0, y), (x1, y), tube, colour * 0.95, "cylinder", light=-0.6)
        for x in xs:  # couplers
            draw.paint(scene.canvas, draw.ellipse_alpha((x, y), (tube * 0.9, tube * 0.9), 0, scene.width,
                                                        scene.height), colour * 0.55)
    for i in range(min(len(xs), len(ys)) - 1):  # diagonal braces
        if rng.random() < 0.6:
            draw.draw_bar(scene.canvas, (xs[i], ys[i]), (xs[i + 1], ys[i + 1]), tube * 0.8, colour * 0.9,
                          "cylinder", light=0.3)


def _draw_thin_pipe(scene: _Scene) -> None:
    """Uninsulated painted process lines: not inspection targets, so never part of the mask."""
    rng = scene.rng
    colour = _jitter(rng, _pick(rng, _PAINT), 0.06)
    thick = scene.px(rng.uniform(0.008, 0.03))
    angle = (0.0 if rng.random() < 0.5 else math.pi / 2) + rng.normal(0, 0.06)
    t = np.array([math.cos(angle), math.sin(angle)])
    c = scene.random_point()
    reach = float(np.hypot(scene.width, scene.height))
    draw.draw_bar(scene.canvas, c - t * reach, c + t * reach, thick, colour, "cylinder",
                  light=float(scene.light @ np.array([-t[1], t[0]])), alpha_out=scene.objects)
    for _ in range(int(rng.integers(0, 3))):  # flanges
        f = c + t * rng.uniform(-0.5, 0.5) * reach
        draw.draw_bar(scene.canvas, f - t * thick * 0.25, f + t * thick * 0.25, thick * 1.7, colour * 0.85,
                      "cylinder", alpha_out=scene.objects)


def _draw_tank(scene: _Scene) -> None:
    rng = scene.rng
    colour = _jitter(rng, _pick(rng, ((0.85, 0.85, 0.82), (0.62, 0.64, 0.66), (0.55, 0.60, 0.52),
                                      (0.78, 0.76, 0.70))), 0.05)
    width = scene.px(rng.uniform(0.15, 0.45))
    cx = rng.uniform(0, scene.width)
    top = rng.uniform(-0.2, 0.6) * scene.height
    bottom = top + width * rng.uniform(0.8, 3.0)
    draw.draw_bar(scene.canvas, (cx - width / 2, (top + bottom) / 2), (cx + width / 2, (top + bottom) / 2),
                  bottom - top, colour, "flat", alpha_out=scene.objects)
    # cylindrical shading across the tank body: darken the sides
    box = draw.clip_box(cx - width / 2, top, cx + width / 2, bottom, scene.width, scene.height)
    if box is not None:
        xs, _ = draw.pixel_grid(box)
        v = np.clip((xs - cx) / (width / 2), -1, 1)
        shade = 0.55 + 0.5 * np.sqrt(1 - v * v) * (1 + 0.3 * v * scene.light[0])
        x0, y0, x1, y1 = box
        scene.canvas[y0:y1, x0:x1] *= shade[..., None]
    draw.paint(scene.canvas, draw.ellipse_alpha((cx, top), (width / 2, width * 0.08), 0, scene.width, scene.height),
               colour * 1.05)
    for _ in range(int(rng.integers(1, 4))):  # weld rings
        y = rng.uniform(top, bottom)
        draw.draw_bar(scene.canvas, (cx - width / 2, y), (cx + width / 2, y), scene.px(0.002), colour * 0.7, "flat")


def _draw_box(scene: _Scene) -> None:
    rng = scene.rng
    colour = _jitter(rng, _pick(rng, ((0.72, 0.72, 0.68), (0.55, 0.58, 0.60), (0.85, 0.80, 0.60),
                                      (0.35, 0.45, 0.38), (0.75, 0.30, 0.20))), 0.05)
    w, h = scene.px(rng.uniform(0.06, 0.25)), scene.px(rng.uniform(0.08, 0.3))
    c = scene.random_point()
    pts = draw.rect_points(c, (1.0, 0.0), w, h)
    draw.paint(scene.canvas, draw.polygon_alpha(pts, scene.width, scene.height), colour, alpha_out=scene.objects)
    draw.paint(scene.canvas, draw.polyline_alpha(pts, scene.px(0.003), scene.width, scene.height, closed=True),
               colour * 0.55)
    inner = draw.rect_points(c, (1.0, 0.0), w * 0.8, h * 0.85)
    draw.paint(scene.canvas, draw.polyline_alpha(inner, scene.px(0.002), scene.width, scene.height, closed=True),
               colour * 0.75)
    side = draw.rect_points(c + (w * 0.56, 0), (1.0, 0.0), w * 0.12, h)  # side face in shade
    draw.paint(scene.canvas, draw.polygon_alpha(side, scene.width, scene.height), colour * 0.6)


def _draw_valve(scene: _Scene) -> None:
    rng = scene.rng
    colour = _jitter(rng, _pick(rng, ((0.75, 0.15, 0.12), (0.85, 0.70, 0.10), (0.25, 0.45, 0.70),
                                      (0.20, 0.22, 0.24))), 0.05)
    c = scene.random_point(0.05)
    radius = scene.px(rng.uniform(0.02, 0.07))
    body = draw.rect_points(c + (0, radius * 1.4), (1.0, 0.0), radius * 1.2, radius * 1.4)
    draw.paint(scene.canvas, draw.polygon_alpha(body, scene.width, scene.height), _jitter(rng, (0.3, 0.3, 0.32)))
    draw.draw_bar(scene.canvas, c, c + (0, radius * 1.4), radius * 0.2, (0.5, 0.5, 0.5), "cylinder")
    ring = max(1, int(round(radius * 0.18)))
    draw.paint(scene.canvas, draw.ellipse_alpha(c, (radius, radius * rng.uniform(0.4, 1.0)), 0, scene.width,
                                                scene.height, thickness=ring), colour)
    for k in range(int(rng.integers(3, 6))):
        a = k * 2 * math.pi / 5 + rng.uniform(0, 0.3)
        draw.draw_bar(scene.canvas, c, c + radius * np.array([math.cos(a), math.sin(a) * 0.7]), ring * 0.7, colour,
                      "flat")


def _draw_ladder(scene: _Scene) -> None:
    rng = scene.rng
    colour = _jitter(rng, _pick(rng, ((0.85, 0.70, 0.10), (0.60, 0.60, 0.60), (0.30, 0.45, 0.30))), 0.05)
    x = rng.uniform(0, scene.width)
    gap = scene.px(rng.uniform(0.04, 0.08))
    rail = scene.px(0.006)
    for side in (0, gap):
        draw.draw_bar(scene.canvas, (x + side, -5), (x + side, scene.height + 5), rail, colour, "cylinder")
    rungs = [(x, y, x + gap, y) for y in np.arange(rng.uniform(0, gap), scene.height, gap * 0.8)]
    draw.paint(scene.canvas, draw.segments_alpha(rungs, rail * 0.7, scene.width, scene.height), colour * 0.9)


def _draw_grating(scene: _Scene) -> None:
    rng = scene.rng
    y0 = rng.uniform(0.55, 0.9) * scene.height
    colour = _jitter(rng, (0.45, 0.45, 0.44), 0.1)
    band = draw.rect_points((scene.width / 2, (y0 + scene.height) / 2), (1.0, 0.0), scene.width + 4,
                            scene.height - y0)
    draw.paint(scene.canvas, draw.polygon_alpha(band, scene.width, scene.height), colour * 0.7, opacity=0.9)
    step = scene.px(0.015, 2.0)
    bars = [(x, y0, x + (scene.height - y0) * 0.4, scene.height)
            for x in np.arange(-scene.height, scene.width + scene.height, step)]
    draw.paint(scene.canvas, draw.segments_alpha(bars, scene.px(0.002), scene.width, scene.height), colour, 0.8)


def _draw_cables(scene: _Scene) -> None:
    """A bundle of sagging cables (or a cable tray edge) crossing part of the frame."""
    rng = scene.rng
    start = np.array([rng.uniform(-0.1, 0.4) * scene.width, rng.uniform(0, 1) * scene.height])
    end = np.array([rng.uniform(0.6, 1.1) * scene.width, rng.uniform(0, 1) * scene.height])
    s = np.linspace(0, 1, 32)[:, None]
    sag = scene.px(rng.uniform(0.0, 0.12))
    for k in range(int(rng.integers(1, 5))):
        offset = np.array([0.0, k * scene.px(0.012)])
        droop = np.array([0.0, 1.0]) * (4 * s * (1 - s)) * sag * rng.uniform(0.8, 1.2)  # parabolic sag
        pts = start + (end - start) * s + offset + droop
        colour = _jitter(rng, _pick(rng, ((0.08, 0.08, 0.08), (0.15, 0.15, 0.16), (0.55, 0.30, 0.10))), 0.2)
        draw.paint(scene.canvas, draw.polyline_alpha(pts, scene.px(rng.uniform(0.003, 0.008)), scene.width,
                                                     scene.height), colour, alpha_out=scene.objects)


def _draw_gauge(scene: _Scene) -> None:
    rng = scene.rng
    c = scene.random_point(0.05)
    radius = scene.px(rng.uniform(0.01, 0.03), 2.0)
    draw.draw_bar(scene.canvas, c, c + (0, radius * 2.5), radius * 0.35, (0.45, 0.45, 0.45), "cylinder")
    draw.paint(scene.canvas, draw.ellipse_alpha(c, (radius, radius), 0, scene.width, scene.height), (0.9, 0.9, 0.88),
               alpha_out=scene.objects)
    draw.paint(scene.canvas, draw.ellipse_alpha(c, (radius, radius), 0, scene.width, scene.height,
                                                thickness=max(1, int(radius * 0.2))), (0.2, 0.2, 0.2))
    a = rng.uniform(0, 2 * math.pi)
    draw.paint(scene.canvas, draw.polyline_alpha(np.stack([c, c + radius * 0.8 * np.array([math.cos(a), math.sin(a)])]),
                                                 max(1.0, radius * 0.1), scene.width, scene.height), (0.1, 0.1, 0.1))


_BACKGROUND_OBJECTS = (_draw_tank, _draw_box, _draw_valve, _draw_thin_pipe, _draw_ladder, _draw_box, _draw_valve,
                       _draw_cables, _draw_gauge, _draw_thin_pipe)


def _draw_background(scene: _Scene) -> dict:
    rng = scene.rng
    info = _draw_backdrop(scene)
    _draw_far_structures(scene)
    if rng.random() < 0.35:
        _draw_grating(scene)
    for _ in range(int(rng.integers(0, 3))):
        _draw_tank(scene)
    _draw_steel(scene)
    if rng.random() < 0.55:
        _draw_scaffolding(scene)
    for _ in range(int(rng.integers(5, 13))):
        _pick(rng, _BACKGROUND_OBJECTS)(scene)
    return info


# --------------------------------------------------------------------------------------------- occluders
def _draw_occluders(scene: _Scene) -> list[str]:
    rng = scene.rng
    owned = np.flatnonzero(scene.pipe_id)
    if owned.size == 0:
        return []
    alpha = np.zeros(scene.pipe_id.shape, np.float32)
    kinds = []
    for _ in range(int(rng.integers(1, 3))):
        hit = owned[int(rng.integers(owned.size))]
        c = np.array([hit % scene.width, hit // scene.width], np.float64)
        pipe = scene.pipes[scene.pipe_id.flat[hit] - 1]
        t = _pipe_frame(pipe, c)
        kind = _pick(rng, ("pole", "column", "cable", "sign", "pole", "thin_pipe"))
        reach = float(np.hypot(scene.width, scene.height))
        if kind in ("pole", "column", "thin_pipe"):
            # roughly across the pipe, or plumb
            d = np.array([-t[1], t[0]]) if rng.random() < 0.5 else np.array([0.0, 1.0])
            if abs(float(d @ t)) > 0.7:  # plumb along a vertical pipe would hide it entirely: go across
                d = np.array([-t[1], t[0]])
            d = _rotate(d, rng.normal(0, 0.15))
            if kind == "column":
                thick = pipe.radius * rng.uniform(0.4, 1.0)
                colour, profile = _jitter(rng, _pick(rng, _STEEL), 0.06), "ibeam"
            elif kind == "pole":
                thick = max(2.0, pipe.radius * rng.uniform(0.15, 0.35))
                colour, profile = _jitter(rng, _pick(rng, ((0.62, 0.63, 0.64), (0.85, 0.7, 0.12))), 0.05), "cylinder"
            else:
                thick = max(2.0, pipe.radius * rng.uniform(0.25, 0.5))
                colour, profile = _jitter(rng, _pick(rng, _PAINT), 0.05), "cylinder"
            length = reach if rng.random() < 0.6 else pipe.radius * rng.uniform(3, 8)
            draw.draw_bar(scene.canvas, c - d * length / 2, c + d * length / 2, thick, colour, profile,
                          light=float(scene.light @ np.array([-d[1], d[0]])), alpha_out=alpha)
        elif kind == "cable":
            span = pipe.radius * rng.uniform(4, 12)
            d = _rotate(np.array([-t[1], t[0]]), rng.normal(0, 0.5))
            s = np.linspace(-0.5, 0.5, 24)[:, None]
            sag = (0.25 - s**2) * span * rng.uniform(0.1, 0.6) * np.array([0.0, 1.0])
            pts = c + s * span * d + sag - sag.mean(0)
            draw.paint(scene.canvas, draw.polyline_alpha(pts, max(1.5, pipe.radius * rng.uniform(0.06, 0.14)),
                                                         scene.width, scene.height),
                       _jitter(rng, (0.08, 0.08, 0.08), 0.5), alpha_out=alpha)
        else:  # sign board / junction box on a bracket
            w, h = pipe.radius * rng.uniform(0.8, 2.0), pipe.radius * rng.uniform(0.6, 1.6)
            pts = draw.rect_points(c + rng.uniform(-0.5, 0.5, 2) * pipe.radius, (1.0, 0.0), w, h)
            colour = _jitter(rng, _pick(rng, ((0.9, 0.85, 0.2), (0.85, 0.85, 0.85), (0.7, 0.2, 0.15),
                                              (0.5, 0.55, 0.6))), 0.05)
            draw.paint(scene.canvas, draw.polygon_alpha(pts, scene.width, scene.height), colour, alpha_out=alpha)
            draw.paint(scene.canvas, draw.polyline_alpha(pts, max(1.0, w * 0.04), scene.width, scene.height,
                                                         closed=True), colour * 0.5)
        kinds.append(kind)
    scene.pipe_id[alpha >= 0.5] = 0  # the mask excludes whatever stands in front of the pipe
    return kinds
