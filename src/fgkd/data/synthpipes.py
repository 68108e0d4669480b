"""SynthPipes: the embedded default dataset — insulated refinery pipes with damage, in cluttered scenes.

It models the problem of the FAKD paper (PDI images, Fig. 1): one or more insulated pipes (cylindrical
shading, cladding seams and bands, elbows, taper from perspective, occluders in front) in a cluttered
plant (steel structure, scaffolding, tanks, cabinets, valves, thin painted lines, textures, lighting,
shadows, haze, blur, noise). Damage boxes lie ON the pipe only (class 0 corrosion, 1
damaged_insulation, 2 dent); damage-like *distractors* (rust, holes, tears, dents) lie on background
objects and are unlabelled — exactly what the teacher's masked view X_M (Eq. 2-4) removes.

Output is the YOLO-with-masks layout of the contract (images/, labels/, masks/, data.yaml) plus a
``meta.jsonl`` sidecar (per-image sizes, pipe kinds, damage and distractor boxes in pixels).

Determinism: image i is drawn from ``np.random.SeedSequence([seed, 1, i])`` only (one spawned stream
per stage: scene, damages, distractors, photo effects), so the same settings give byte-identical
files (on the same platform/OpenCV build) and image i does not depend on ``num_images``; the
train/val split comes from ``default_rng([seed, 0])``.

Caching (``ensure_dataset``): the dataset lives in ``<cache_root>/synthpipes-<key>``, where key hashes
every generator setting and GENERATOR_VERSION, so a changed setting makes a new folder, never a mixed
one. Writing is atomic (temp sibling + rename, ``.complete`` marker written last; a folder without a
valid marker is never reused). Concurrency: processes on one host serialise on an ``fcntl.flock`` of
``.synthpipes-<key>.lock``; where flock is unavailable the first complete rename wins and a loser
discards its own copy.

CLI: ``python -m fgkd.data.synthpipes --out DIR --num-images N --seed S [--max-side PX]
[--val-fraction F] [--full-size] [--workers K] [--overwrite]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from fgkd.data import _synth_draw as draw

GENERATOR_VERSION = "1.0"  # bump on ANY change to the drawn pixels, boxes or layout: it keys every cache
CLASS_NAMES: tuple[str, ...] = ("corrosion", "damaged_insulation", "dent")
# Camera resolutions of the PDI dataset range from 1920x1080 to 9504x6336 (paper, Sec. 4).
PDI_SIZES: tuple[tuple[int, int], ...] = (
    (1920, 1080), (3840, 2160), (4000, 3000), (4608, 3456), (5472, 3648), (6000, 4000), (9504, 6336),
)
MARKER_NAME = ".complete"
META_NAME = "meta.jsonl"


@dataclasses.dataclass(frozen=True)
class SynthPipesSettings:
    """Every setting that shapes the generated files (all of them enter the cache key)."""

    num_images: int = 240
    seed: int = 0
    max_side: int = 640  # longer image side in px (ignored with full_size)
    val_fraction: float = 0.2
    full_size: bool = False  # write PDI camera resolution instead of scaling to max_side
    empty_fraction: float = 0.15  # images drawn without damage
    max_pipes: int = 3
    max_damages: int = 4
    max_distractors: int = 6
    occlusion_prob: float = 0.4
    elbow_prob: float = 0.45
    portrait_prob: float = 0.25
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"synthpipes setting {key}={getattr(self, key)!r} is invalid: {rule}")

        for key in ("num_images", "seed", "max_side", "max_pipes", "max_damages", "max_distractors", "jpeg_quality"):
            value = getattr(self, key)
            need(isinstance(value, (int, np.integer)) and not isinstance(value, bool), key, "must be an integer")
        for key in ("val_fraction", "empty_fraction", "occlusion_prob", "elbow_prob", "portrait_prob"):
            value = getattr(self, key)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0, key,
                 "must be a number in [0, 1]")
        need(isinstance(self.full_size, bool), "full_size", "must be true or false")
        need(self.num_images >= 1, "num_images", "must be >= 1")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.max_side >= 32, "max_side", "must be >= 32 px")
        need(self.val_fraction < 1.0, "val_fraction", "must be < 1 (the train split cannot be empty)")
        need(self.max_pipes >= 1, "max_pipes", "must be >= 1")
        need(self.max_damages >= 1, "max_damages", "must be >= 1")
        need(self.max_distractors >= 0, "max_distractors", "must be >= 0")
        need(1 <= self.jpeg_quality <= 100, "jpeg_quality", "must be in 1..100")

    @classmethod
    def from_kwargs(cls, **settings) -> SynthPipesSettings:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise TypeError(f"unknown synthpipes setting(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**settings)

    def as_dict(self) -> dict:
        """Settings plus GENERATOR_VERSION: what data.yaml's ``generator`` block and the marker hold."""
        out = {"name": "synthpipes", "version": GENERATOR_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.item() if isinstance(value, np.generic) else value
        return out

    def key(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass
class SynthSample:
    """One rendered image: RGB uint8 [H, W, 3], mask uint8 0/255 [H, W], boxes xyxy px, classes, meta."""

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray  # float32 [K, 4] x1 y1 x2 y2 in pixels (pixel-edge coordinates)
    classes: np.ndarray  # int64 [K]
    meta: dict


# --------------------------------------------------------------------------------------------- palettes
_CLADDING = {  # base colour, (ambient, diffuse, specular, highlight width)
    "aluminium": ((0.74, 0.76, 0.78), (0.30, 0.62, 0.45, 0.16)),
    "grey": ((0.56, 0.57, 0.58), (0.32, 0.68, 0.18, 0.30)),
    "white": ((0.88, 0.88, 0.85), (0.34, 0.64, 0.12, 0.40)),
    "yellowish": ((0.82, 0.74, 0.46), (0.32, 0.66, 0.12, 0.35)),
    "greenish": ((0.52, 0.62, 0.52), (0.32, 0.66, 0.14, 0.32)),
}
_STEEL = ((0.55, 0.56, 0.58), (0.50, 0.24, 0.18), (0.85, 0.68, 0.12), (0.30, 0.45, 0.33), (0.35, 0.40, 0.48),
          (0.42, 0.33, 0.26), (0.70, 0.70, 0.68))
_PAINT = ((0.70, 0.15, 0.12), (0.85, 0.70, 0.10), (0.20, 0.45, 0.25), (0.60, 0.60, 0.62), (0.20, 0.30, 0.60),
          (0.85, 0.45, 0.10), (0.90, 0.90, 0.88))
_RUST = ((0.55, 0.26, 0.09), (0.66, 0.34, 0.12), (0.45, 0.22, 0.10), (0.72, 0.44, 0.18), (0.38, 0.20, 0.11))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, colour, amount: float = 0.05) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) * (1 + rng.uniform(-amount, amount)) +
                   rng.uniform(-amount, amount, 3).astype(np.float32) * 0.5, 0, 1)


# --------------------------------------------------------------------------------------------- pipe geometry
@dataclasses.dataclass
class _Piece:
    """A straight run or an elbow of a pipe centreline; ``local`` maps pixels to the pipe's frame."""

    kind: str  # "line" | "arc"
    u0: float  # arclength at the piece start
    spacing: float  # cladding sheet length (px along the centreline)
    phase: float
    p0: np.ndarray = None  # line: start point
    t: np.ndarray = None  # line: unit direction
    length: float = 0.0
    centre: np.ndarray = None  # arc: centre of the bend
    bend: float = 0.0  # arc: centreline bend radius
    theta0: float = 0.0
    turn: int = 1  # +1 bends towards the left normal, -1 towards the right
    sweep: float = 0.0

    def local(self, xs, ys):
        """(u along, d across [px, + = left normal], valid, sheet coordinate g, normal x, normal y)."""
        if self.kind == "line":
            rx, ry = xs - np.float32(self.p0[0]), ys - np.float32(self.p0[1])
            tx, ty = np.float32(self.t[0]), np.float32(self.t[1])
            along = rx * tx + ry * ty
            d = rx * -ty + ry * tx
            valid = (along >= -0.5) & (along <= self.length + 0.5)
            nx = np.full_like(d, -ty)
            ny = np.full_like(d, tx)
            return self.u0 + along, d, valid, (along + self.phase) / self.spacing, nx, ny
        rx, ry = xs - np.float32(self.centre[0]), ys - np.float32(self.centre[1])
        rho = np.sqrt(rx * rx + ry * ry) + np.float32(1e-6)
        delta = np.mod(self.turn * (np.arctan2(ry, rx) - np.float32(self.theta0)), np.float32(2 * np.pi))
        valid = delta <= self.sweep + 0.5 / self.bend
        d = self.turn * (self.bend - rho)
        # the left normal points towards the bend centre for a left turn (d grows inwards)
        nx, ny = -self.turn * rx / rho, -self.turn * ry / rho
        arclen = delta * self.bend
        return self.u0 + arclen, d, valid, (arclen + self.phase) / self.spacing, nx, ny


@dataclasses.dataclass
class _Pipe:
    pieces: list
    radius: float
    taper: float  # d(radius)/d(u): perspective narrowing along the pipe
    cladding: str
    colour: np.ndarray
    seam: float  # seam position across the pipe, in radii
    kind: str
    tint_phase: float
    weathering: float  # 0 = new cladding, 1 = dirty and streaked

    def bounds(self) -> tuple[float, float, float, float]:
        pts = []
        rmax = self.radius + abs(self.taper) * 4 * sum(p.length + p.bend * p.sweep for p in self.pieces) + 2
        for p in self.pieces:
            if p.kind == "line":
                pts += [p.p0, p.p0 + p.t * p.length]
            else:
                pts += [p.centre - p.bend, p.centre + p.bend]
        arr = np.asarray(pts)
        return arr[:, 0].min() - rmax, arr[:, 1].min() - rmax, arr[:, 0].max() + rmax, arr[:, 1].max() + rmax


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([v[0] * c - v[1] * s, v[0] * s + v[1] * c])


def _build_path(rng: np.random.Generator, anchor: np.ndarray, direction: np.ndarray, radius: float,
                reach: float, bends: int) -> tuple[list, str]:
    """Centreline through ``anchor``: a long straight, then ``bends`` elbows (L or U/Z shapes)."""
    spacing = 2 * radius * rng.uniform(1.4, 3.2)
    phase = rng.uniform(0, spacing)
    t = direction / np.hypot(*direction)
    if bends == 0:
        start = anchor - t * reach
        return [_Piece("line", 0.0, spacing, phase, p0=start, t=t, length=2 * reach)], "straight"
    pieces = [_Piece("line", 0.0, spacing, phase, p0=anchor - t * reach, t=t, length=reach)]
    point, u = anchor.copy(), reach
    first_turn = int(rng.choice([-1, 1]))
    kinds = []
    for b in range(bends):
        turn = first_turn if b == 0 else int(rng.choice([-1, 1]))
        sweep = math.pi / 2 if rng.random() < 0.8 else math.pi / 4
        bend = radius * rng.uniform(2.0, 3.2)  # long/short-radius elbows: 1.0-1.6 × diameter
        n = np.array([-t[1], t[0]])
        centre = point + turn * bend * n
        theta0 = math.atan2(point[1] - centre[1], point[0] - centre[0])
        gores = int(rng.integers(3, 6))
        arc_spacing = bend * sweep / gores  # gored elbow cladding: radial joints
        pieces.append(_Piece("arc", u, arc_spacing, 0.0, centre=centre, bend=bend, theta0=theta0, turn=turn,
                             sweep=sweep))
        end_angle = theta0 + turn * sweep
        point = centre + bend * np.array([math.cos(end_angle), math.sin(end_angle)])
        t = _rotate(t, turn * sweep)
        u += bend * sweep
        run = reach if b == bends - 1 else radius * rng.uniform(3.0, 9.0)
        pieces.append(_Piece("line", u, spacing, rng.uniform(0, spacing), p0=point.copy(), t=t.copy(), length=run))
        point = point + t * run
        u += run
        kinds.append(turn)
    name = "L" if bends == 1 else ("U" if kinds[0] == kinds[1] else "Z")
    return pieces, name


# --------------------------------------------------------------------------------------------- the scene
class _Scene:
    """Mutable per-image state: canvas (float32 RGB), pipe id map (0 = background), pipe cross-coordinate."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.rng = rng
        self.width, self.height = width, height
        self.short = float(min(width, height))
        self.canvas = np.zeros((height, width, 3), np.float32)
        self.pipe_id = np.zeros((height, width), np.uint8)
        self.pipe_v = np.zeros((height, width), np.float32)
        self.objects = np.zeros((height, width), np.float32)  # coverage of background equipment (distractor hosts)
        self.pipes: list[_Pipe] = []
        angle = rng.uniform(-math.pi * 0.9, -math.pi * 0.1)  # sun from above, left or right
        self.light = np.array([math.cos(angle), math.sin(angle)])
        self.grime = draw.smooth_noise(rng, height, width, self.short * 0.07)
        # vertical rain/dirt streaks: noise stretched along y
        streak = rng.standard_normal((3, max(2, int(width / max(1.0, self.short * 0.012))))).astype(np.float32)
        self.streaks = cv2.resize(streak, (width, height), interpolation=cv2.INTER_LINEAR)
        self.sky = None
        self.horizon = None

    def px(self, fraction: float, minimum: float = 1.0) -> float:
        return max(minimum, fraction * self.short)

    def random_point(self, margin: float = 0.0) -> np.ndarray:
        return np.array([self.rng.uniform(margin, 1 - margin) * self.width,
                         self.rng.uniform(margin, 1 - margin) * self.height])


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


# --------------------------------------------------------------------------------------------- pipes
def _render_pipe(scene: _Scene, pipe: _Pipe, pipe_index: int) -> int:
    """Shade the insulated pipe onto the canvas and claim its pixels in pipe_id/pipe_v; returns pixel count."""
    box = draw.clip_box(*pipe.bounds(), scene.width, scene.height)
    if box is None:
        return 0
    kind_params = _CLADDING[pipe.cladding][1]
    ambient, diffuse, specular, spec_width = (np.float32(p) for p in kind_params)
    base = pipe.colour.astype(np.float32)
    lx, ly = np.float32(scene.light[0]), np.float32(scene.light[1])
    spacings = np.asarray([p.spacing for p in pipe.pieces], np.float32)
    claimed = 0
    for strip in draw.strips(box):
        xs, ys = draw.pixel_grid(strip)
        shape = (strip[3] - strip[1], strip[2] - strip[0])
        u_map = np.zeros(shape, np.float32)
        d_map = np.full(shape, np.inf, np.float32)
        g_map = np.zeros(shape, np.float32)
        nx_map = np.zeros(shape, np.float32)
        ny_map = np.zeros(shape, np.float32)
        piece_map = np.zeros(shape, np.int64)
        for k, piece in enumerate(pipe.pieces):
            u, d, valid, g, nx, ny = piece.local(xs, ys)
            take = valid & (np.abs(d) < np.abs(d_map))
            if not take.any():
                continue
            u_map = np.where(take, u, u_map)
            d_map = np.where(take, d, d_map)
            g_map = np.where(take, g + 97.0 * k, g_map)
            nx_map = np.where(take, nx, nx_map)
            ny_map = np.where(take, ny, ny_map)
            piece_map = np.where(take, k, piece_map)
        radius_map = np.maximum(pipe.radius + pipe.taper * u_map, 1.0).astype(np.float32)
        cover_map = np.clip(radius_map - np.abs(d_map) + 0.5, 0, 1).astype(np.float32)
        hit = cover_map > 0
        if not hit.any():
            continue
        # shade only the covered pixels (1-D), the bounding box of a diagonal pipe is mostly empty
        radius, d, g = radius_map[hit], d_map[hit], g_map[hit]
        v = np.clip(d / radius, -1, 1)
        theta = np.arcsin(v)
        theta_light = np.arcsin(np.clip(0.85 * (lx * nx_map[hit] + ly * ny_map[hit]), -1, 1))
        shade = ambient + diffuse * np.maximum(0, np.cos(theta - theta_light))
        tint = 1 + 0.045 * np.sin(np.floor(g) * 12.9898 + pipe.tint_phase)  # each cladding sheet differs a bit
        x0, y0, x1, y1 = strip
        dirt = 1 + (0.05 + 0.1 * pipe.weathering) * scene.grime[y0:y1, x0:x1][hit] \
            + (0.02 + 0.06 * pipe.weathering) * scene.streaks[y0:y1, x0:x1][hit]
        # grime collects on the underside (surface normal pointing down the image)
        dirt *= 1 - 0.18 * pipe.weathering * np.clip(ny_map[hit] * v, 0, 1)
        # cladding bands (straps at sheet joints) and the longitudinal seam
        spacing = spacings[piece_map[hit]]
        band_dist = np.abs(g - np.round(g)) * spacing
        band_w = np.maximum(1.0, radius * 0.07)
        factor = np.where(band_dist < band_w * 0.5, 0.72, np.where(band_dist < band_w, 1.12, 1.0))
        seam_dist = np.abs(d - pipe.seam * radius)
        seam_w = np.maximum(0.7, radius * 0.03)
        factor *= np.where(seam_dist < seam_w, 0.68, np.where(seam_dist < 2 * seam_w, 1.08, 1.0))
        # silhouette edge: a faint dark rim where the cladding turns away
        factor *= 1 - 0.25 * np.clip(np.abs(v) * 6 - 5, 0, 1)
        colour = base * (shade * tint * dirt)[:, None]
        colour += (specular * np.exp(-((theta - theta_light * 0.8) / spec_width) ** 2))[:, None]
        colour *= factor[:, None]
        region = scene.canvas[y0:y1, x0:x1]
        cover = cover_map[hit][:, None]
        region[hit] = region[hit] * (1 - cover) + np.clip(colour, 0, 1) * cover
        own_local = cover[:, 0] >= 0.5
        own = np.zeros_like(hit)
        own[hit] = own_local
        scene.pipe_id[y0:y1, x0:x1][own] = pipe_index
        scene.pipe_v[y0:y1, x0:x1][own] = v[own_local]
        claimed += int(own.sum())
    return claimed


def _make_pipes(scene: _Scene, settings: SynthPipesSettings) -> list[dict]:
    rng = scene.rng
    reach = float(np.hypot(scene.width, scene.height)) * 1.3
    count = 1 + int(rng.choice(settings.max_pipes, p=_geometric(settings.max_pipes, 0.5)))
    info = []
    first = None
    for index in range(1, count + 1):
        big = rng.random() < 0.15
        radius = scene.short * (rng.uniform(0.12, 0.22) if big else rng.uniform(0.035, 0.11))
        cladding = _pick(rng, tuple(_CLADDING))
        colour = _jitter(rng, _CLADDING[cladding][0], 0.05)
        if first is not None and rng.random() < 0.5 and first.kind == "straight":
            # a parallel line on the same rack
            t = first.pieces[0].t
            n = np.array([-t[1], t[0]])
            side = rng.choice([-1, 1])
            offset = first.radius + radius + scene.px(rng.uniform(0.01, 0.08))
            anchor = first.pieces[0].p0 + t * first.pieces[0].length / 2 + side * offset * n
            direction = t
            bends = 0
        else:
            anchor = scene.random_point(0.2 if rng.random() < settings.elbow_prob else 0.08)
            if rng.random() < 0.75:  # mostly horizontal/vertical runs, tilted by perspective
                angle = (0.0 if rng.random() < 0.6 else math.pi / 2) + rng.normal(0, 0.12)
            else:
                angle = rng.uniform(0, math.pi)
            direction = np.array([math.cos(angle), math.sin(angle)])
            bends = 0
            if rng.random() < settings.elbow_prob:
                bends = 1 if rng.random() < 0.75 else 2
        pieces, kind = _build_path(rng, anchor, direction, radius, reach, bends)
        taper = rng.uniform(-0.25, 0.25) * radius / reach if kind == "straight" else 0.0
        pipe = _Pipe(pieces, radius, taper, cladding, colour, float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.75)),
                     kind, float(rng.uniform(0, 100)), float(rng.uniform(0, 1)))
        pixels = _render_pipe(scene, pipe, index)
        scene.pipes.append(pipe)
        first = first or pipe
        info.append({"id": index, "kind": kind, "cladding": cladding, "radius_px": round(radius, 2),
                     "pixels_drawn": pixels})
    return info


def _geometric(n: int, ratio: float) -> np.ndarray:
    w = ratio ** np.arange(n)
    return w / w.sum()


def _pipe_frame(pipe: _Pipe, point: np.ndarray) -> np.ndarray:
    """Unit tangent of the pipe piece that owns ``point``."""
    xs = np.array([[point[0]]], np.float32)
    ys = np.array([[point[1]]], np.float32)
    best, tangent = np.inf, np.array([1.0, 0.0])
    for piece in pipe.pieces:
        _, d, valid, _, nx, ny = piece.local(xs, ys)
        if valid[0, 0] and abs(d[0, 0]) < best:
            best = abs(d[0, 0])
            tangent = np.array([float(ny[0, 0]), -float(nx[0, 0])])
    return tangent


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


# --------------------------------------------------------------------------------------------- writing
def split_of(settings: SynthPipesSettings) -> list[str]:
    """'train' / 'val' per image index (a seeded permutation; both splits non-empty when N >= 2)."""
    n = settings.num_images
    n_val = int(round(n * settings.val_fraction))
    if settings.val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    val = set(np.random.default_rng([settings.seed, 0]).permutation(n)[:n_val].tolist())
    return ["val" if i in val else "train" for i in range(n)]


def _write_one(job: tuple[int, str, str, SynthPipesSettings]) -> dict:
    index, split, root, settings = job
    sample = render_sample(index, settings)
    stem = f"{index:06d}"
    base = Path(root)
    image_path = base / "images" / split / f"{stem}.jpg"
    ok = cv2.imwrite(str(image_path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR),
                     [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
    ok &= cv2.imwrite(str(base / "masks" / split / f"{stem}.png"), sample.mask)
    if not ok:
        raise OSError(f"OpenCV could not write {image_path} (is the disk full or the folder read-only?)")
    lines = yolo_lines(sample.boxes, sample.classes, sample.meta["width"], sample.meta["height"])
    (base / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    return {"stem": stem, "split": split, **sample.meta}


def _data_yaml(settings: SynthPipesSettings) -> dict:
    return {"names": list(CLASS_NAMES), "nc": len(CLASS_NAMES), "train": "images/train", "val": "images/val",
            "generator": settings.as_dict()}


def _is_complete(root: Path, settings: SynthPipesSettings) -> bool:
    marker = root / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("generator") == settings.as_dict()
    except (OSError, ValueError):
        return False


def generate(out_dir: str | os.PathLike, num_images: int, seed: int, max_side: int = 640,
             val_fraction: float = 0.2, *, overwrite: bool = False, workers: int = 0, progress: bool = True,
             **settings) -> Path:
    """Write a SynthPipes dataset to ``out_dir`` (atomically) and return its path.

    ``settings`` are the other SynthPipesSettings fields (full_size, empty_fraction, ...). The files go to
    a temporary sibling first and are renamed onto ``out_dir`` at the end; an existing non-empty
    ``out_dir`` is an error unless ``overwrite``. ``workers`` > 0 renders in that many processes (same
    bytes as serial).
    """
    config = SynthPipesSettings.from_kwargs(num_images=num_images, seed=seed, max_side=max_side,
                                            val_fraction=val_fraction, **settings)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; choose another --out or pass "
                              f"overwrite=True (--overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for kind in ("images", "labels", "masks"):
            for split in ("train", "val"):
                (tmp / kind / split).mkdir(parents=True, exist_ok=True)
        splits = split_of(config)
        jobs = [(i, splits[i], str(tmp), config) for i in range(config.num_images)]
        metas: list[dict] = []
        with tqdm(total=len(jobs), desc=f"SynthPipes -> {out.name}", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            if workers and workers > 0:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    for meta in pool.map(_write_one, jobs, chunksize=4):
                        metas.append(meta)
                        bar.update()
            else:
                for job in jobs:
                    metas.append(_write_one(job))
                    bar.update()
        with open(tmp / META_NAME, "w") as fh:
            for meta in metas:
                fh.write(json.dumps(meta, sort_keys=True) + "\n")
        (tmp / "data.yaml").write_text(yaml.safe_dump(_data_yaml(config), sort_keys=False))
        marker = {"generator": config.as_dict(), "key": config.key(), "images": len(metas),
                  "damaged_images": sum(1 for m in metas if m["damages"])}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True, indent=1))  # written last
        if _is_complete(out, config):  # the same dataset appeared meanwhile: first complete one wins
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # empty folder made by the caller
        elif out.exists():  # overwrite=True (checked above); move aside first so the swap is quick
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if _is_complete(out, config):  # another process finished the same dataset first: it wins
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_cache_root() -> Path:
    """$FGKD_CACHE, else <repo>/outputs/cache (repo found from the package, then the cwd), else ~/.cache/fgkd."""
    env = os.environ.get("FGKD_CACHE")
    if env:
        return Path(env).expanduser()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "pyproject.toml").is_file() and (parent / "src" / "fgkd").is_dir():
                return parent / "outputs" / "cache"
    return Path.home() / ".cache" / "fgkd"


def dataset_dir(cache_root: str | os.PathLike | None = None, **settings) -> Path:
    """Where ensure_dataset keeps the dataset for these settings (it may not exist yet)."""
    config = SynthPipesSettings.from_kwargs(**settings)
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return root.absolute() / f"synthpipes-{config.key()}"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path``; yields False where flock does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # rely on "first complete rename wins" in generate()
        yield False
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_dataset(cache_root: str | os.PathLike | None = None, *, workers: int = 0, progress: bool = True,
                   **settings) -> Path:
    """Return the cached dataset for ``settings``, generating it once (atomic, process-safe)."""
    config = SynthPipesSettings.from_kwargs(**settings)
    final = dataset_dir(cache_root, **settings)
    if _is_complete(final, config):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(final.parent / f".{final.name}.lock") as locked:
        if _is_complete(final, config):  # another process generated it while we waited
            return final
        if locked:  # with the lock held, temp folders of this key belong to crashed runs
            for stale in final.parent.glob(f".{final.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        fields = dataclasses.asdict(config)
        return generate(final, overwrite=True, workers=workers, progress=progress, **fields)


def load_meta(root: str | os.PathLike) -> list[dict]:
    """The per-image records of ``meta.jsonl`` (sizes, pipes, damage and distractor boxes in px)."""
    path = Path(root) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a SynthPipes dataset (python -m fgkd.data.synthpipes)?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    defaults = SynthPipesSettings()
    parser = argparse.ArgumentParser(prog="python -m fgkd.data.synthpipes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--max-side", type=int, default=defaults.max_side, help="longer image side in px")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--full-size", action="store_true", help="write PDI camera resolution (up to 9504x6336)")
    parser.add_argument("--empty-fraction", type=float, default=defaults.empty_fraction)
    parser.add_argument("--max-pipes", type=int, default=defaults.max_pipes)
    parser.add_argument("--max-damages", type=int, default=defaults.max_damages)
    parser.add_argument("--max-distractors", type=int, default=defaults.max_distractors)
    parser.add_argument("--occlusion-prob", type=float, default=defaults.occlusion_prob)
    parser.add_argument("--elbow-prob", type=float, default=defaults.elbow_prob)
    parser.add_argument("--portrait-prob", type=float, default=defaults.portrait_prob)
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--workers", type=int, default=0, help="render in K processes (same output bytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out, args.num_images, args.seed, args.max_side, args.val_fraction,
                       overwrite=args.overwrite, workers=args.workers, progress=not args.quiet,
                       full_size=args.full_size, empty_fraction=args.empty_fraction, max_pipes=args.max_pipes,
                       max_damages=args.max_damages, max_distractors=args.max_distractors,
                       occlusion_prob=args.occlusion_prob, elbow_prob=args.elbow_prob,
                       portrait_prob=args.portrait_prob, jpeg_quality=args.jpeg_quality)
    except (ValueError, TypeError, FileExistsError) as err:
        parser.error(str(err))
    print(f"wrote {args.num_images} images to {out} (data.yaml, meta.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
