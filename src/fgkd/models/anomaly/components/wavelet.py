"""Differentiable 2-D discrete wavelet transform of feature maps (ptwt; filters from PyWavelets).

``WaveletTransform2d(wave="haar", level=1, mode="reflect")``: ``forward(x [B, C, H, W]) → (ll, highs)`` with
``ll`` the coarsest approximation ``[B, C, H/2^J, W/2^J]`` and ``highs[j]`` the detail bands of level ``j``
(coarsest first, pywt order) stacked as ``[B, 3, C, h_j, w_j]`` = (horizontal LH, vertical HL, diagonal HH);
``inverse(ll, highs, size)`` reconstructs (cropped to ``size``: boundary modes of longer filters than Haar
give one extra row/column). Both directions carry gradients (ptwt is plain torch convolutions), so the BSDRD
detail student learns through them. The wavelet is any pywt discrete wavelet name (``haar``, ``db2``,
``sym4``, …); Haar with even sizes is orthonormal and exactly invertible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODES = ("reflect", "zero", "symmetric", "periodic", "constant")
BANDS = ("ll", "lh", "hl", "hh")


def _check_wavelet(wave: str) -> None:
    import pywt

    if wave not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"model.wavelet={wave!r} is not a discrete PyWavelets wavelet; e.g. haar, db2, sym4, coif1 "
                         f"(pywt.wavelist(kind='discrete'))")


class WaveletTransform2d(nn.Module):
    """J-level 2-D DWT and its inverse over the last two axes (module docstring)."""

    def __init__(self, wave: str = "haar", level: int = 1, mode: str = "reflect") -> None:
        super().__init__()
        _check_wavelet(wave)
        if int(level) < 1:
            raise ValueError(f"model.wavelet_level={level!r}: must be >= 1")
        if mode not in MODES:
            raise ValueError(f"model.wavelet_mode={mode!r}: choose one of {', '.join(MODES)}")
        self.wave, self.level, self.mode = wave, int(level), mode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        import ptwt

        try:
            coeffs = ptwt.wavedec2(x, self.wave, level=self.level, mode=self.mode)
        except RuntimeError as err:
            if "padding" not in str(err).lower():
                raise
            raise ValueError(f"model.wavelet={self.wave!r} with wavelet_level={self.level} and wavelet_mode={self.mode!r} "
                             f"cannot transform a {x.shape[-2]}x{x.shape[-1]} feature map (the filter is longer than "
                             "the map at the coarsest level); use a larger imgsz, a lower wavelet_level, haar, or "
                             "wavelet_mode=zero") from err
        return coeffs[0], [torch.stack(tuple(bands), dim=1) for bands in coeffs[1:]]

    def inverse(self, ll: torch.Tensor, highs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        import ptwt
        from ptwt.constants import WaveletDetailTuple2d

        coeffs = (ll, *(WaveletDetailTuple2d(*h.unbind(dim=1)) for h in highs))
        out = ptwt.waverec2(coeffs, self.wave)
        return out[..., : size[0], : size[1]]

    def extra_repr(self) -> str:
        return f"wave={self.wave!r}, level={self.level}, mode={self.mode!r}"
