"""SynthPipes settings, the rendered-sample record, palettes and small random helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from fgkd import io

GENERATOR_VERSION = "1.0"  # bump on ANY change to the drawn pixels, boxes or layout: it keys every cache
CLASS_NAMES: tuple[str, ...] = ("corrosion", "damaged_insulation", "dent")
# Camera resolutions of the PDI dataset range from 1920x1080 to 9504x6336 (paper, Sec. 4).
PDI_SIZES: tuple[tuple[int, int], ...] = (
    (1920, 1080), (3840, 2160), (4000, 3000), (4608, 3456), (5472, 3648), (6000, 4000), (9504, 6336),
)
META_NAME = "meta.jsonl"
COMPLETE_MARKER = io.COMPLETE_MARKER  # the marker holds the generator settings (JSON)


@dataclasses.dataclass(frozen=True)
class SynthPipesSettings:
    """Every setting that shapes the generated files (all of them enter the cache key)."""

    num_images: int = 240
    seed: int = 0
    max_side: int = 640  # longer image side in px (ignored with full_size)
    val_fraction: float = 0.2
    #: a held-out test split (reported numbers only; model selection stays on val). Left out of the key at 0,
    #: so the caches of settings without a test split keep their names
    test_fraction: float = 0.0
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
        for key in ("val_fraction", "test_fraction", "empty_fraction", "occlusion_prob", "elbow_prob", "portrait_prob"):
            value = getattr(self, key)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0, key,
                 "must be a number in [0, 1]")
        need(isinstance(self.full_size, bool), "full_size", "must be true or false")
        need(self.val_fraction + self.test_fraction < 1.0, "test_fraction", "val_fraction + test_fraction must be < 1")
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
            if f.name == "test_fraction" and not value:
                continue
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
