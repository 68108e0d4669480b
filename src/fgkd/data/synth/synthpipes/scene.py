"""SynthPipes scenes: the canvas, and the insulated pipes (paths, cylindrical shading, cladding, masks)."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from fgkd.data.synth import draw
from fgkd.data.synth.synthpipes.settings import _CLADDING, SynthPipesSettings, _jitter, _pick


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
