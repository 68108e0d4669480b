"""Small drawing helpers shared by the figures, predict and the dashboards: tensors to RGB pictures, heat-map
overlays, pictures side by side."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch


def to_uint8(image: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             scale: float = 1.0) -> np.ndarray:
    """``[3, H, W]`` float (in [0, 1], or normalised with ``mean``/``std``) -> RGB uint8 HWC, resized by ``scale``."""
    x = image.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    array = np.ascontiguousarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    if scale != 1.0:
        array = cv2.resize(array, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return array


def heat_overlay(image: np.ndarray, heat: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """``heat`` (any size) resized to ``image``, coloured (jet, ``vmin`` blue … ``vmax`` red), blended half and half."""
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    scaled = np.clip((heat - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    return (0.5 * image + 0.5 * colour).astype(np.uint8)


def side_by_side(*images: np.ndarray, gap: int = 0) -> np.ndarray:
    """RGB pictures left to right (shorter ones padded white at the bottom), ``gap`` white columns between."""
    height = max(i.shape[0] for i in images)
    padded = [np.pad(i, ((0, height - i.shape[0]), (0, gap if n < len(images) - 1 else 0), (0, 0)), constant_values=255)
              for n, i in enumerate(images)]
    return np.concatenate(padded, axis=1)
