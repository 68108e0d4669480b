"""Anomaly maps of reverse distillation, as small functional ops (anomaly.md §1.6, anomaly_spec.md §1).

* ``cosine_distance_maps``: per level ``1 − cos(f_T, f_S)`` over channels, per pixel (paper 001 Eq. 1);
* ``fuse_maps``: bilinear upsampling (``align_corners=True``, as RD4AD) to the output size, then the sum
  (RD4AD's evaluation, ``amap_mode='a'``) or the product over levels;
* ``gaussian_blur``: separable Gaussian, σ 4, kernel ``2·int(4σ + 0.5) + 1`` (33), with scipy's default
  ``reflect`` border (the edge pixel repeated, ``d c b a | a b c d``), i.e. ``scipy.ndimage.gaussian_filter``
  of the official code; separable because the 33×33 kernel applied as one 2-D conv is ~16× the work;
* ``anomaly_map``: all of the above; the image score is the map's maximum (``image_scores``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

FUSIONS = ("sum", "product")


def cosine_distance_maps(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[B, H_k, W_k]`` maps ``1 − cos`` per level; shapes must agree level by level."""
    if len(teacher) != len(student):
        raise ValueError(f"{len(teacher)} teacher levels vs {len(student)} student levels")
    maps = []
    for k, (t, s) in enumerate(zip(teacher, student, strict=True)):
        if t.shape != s.shape:
            raise ValueError(f"level {k}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}")
        maps.append(1 - F.cosine_similarity(t.float(), s.float(), dim=1))
    return maps


def fuse_maps(maps: Sequence[torch.Tensor], size: tuple[int, int], fusion: str = "sum") -> torch.Tensor:
    """Upsample ``[B, h, w]`` maps to ``size`` and add (or multiply) them: ``[B, H, W]``."""
    if fusion not in FUSIONS:
        raise ValueError(f"map fusion must be one of {FUSIONS}, got {fusion!r}")
    fused = None
    for m in maps:
        up = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=True).squeeze(1)
        fused = up if fused is None else (fused + up if fusion == "sum" else fused * up)
    assert fused is not None
    return fused


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, device: torch.device | None = None) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _reflect_pad(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """scipy ``reflect`` (half-sample symmetric) padding along ``dim``, any pad (periodic mirror)."""
    n = x.shape[dim]
    idx = torch.arange(-pad, n + pad, device=x.device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - 1 - idx, idx)
    return x.index_select(dim, idx)


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(map, sigma)`` per ``[..., H, W]`` map (float32 out); σ ≤ 0: unchanged.
    ``dtype``: of the convolution (float64 matches scipy; float32 for runtimes without float64 convolutions,
    e.g. onnxruntime on CPU: the maps then differ by < 1e-5)."""
    if sigma <= 0:
        return maps
    shape = maps.shape
    x = maps.reshape(-1, 1, shape[-2], shape[-1]).to(dtype)
    kernel = gaussian_kernel1d(sigma, truncate, x.device).to(dtype)
    pad = (kernel.numel() - 1) // 2
    x = F.conv2d(_reflect_pad(x, pad, 2), kernel.view(1, 1, -1, 1))
    x = F.conv2d(_reflect_pad(x, pad, 3), kernel.view(1, 1, 1, -1))
    return x.reshape(shape).float()


def anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: tuple[int, int],
                fusion: str = "sum", sigma: float = 4.0, blur_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The blurred ``[B, H, W]`` anomaly map of one batch."""
    return gaussian_blur(fuse_maps(cosine_distance_maps(teacher, student), size, fusion), sigma, dtype=blur_dtype)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image anomaly score = the maximum of its (blurred) map (RD4AD, paper 001)."""
    return torch.amax(maps, dim=(-2, -1))

