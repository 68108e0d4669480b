"""Reverse distillation (RD4AD, Deng & Li 2022) and the two-teacher RD of paper 001 as one torch model.

``ReverseDistillation`` = frozen encoder(s) → [MS-CAM per teacher level] → MFF → [iAFF | add] → OCE → student
decoder. The student rebuilds the *raw* teacher maps (concatenated per level for two teachers: 320/640/1280
for WRN50-2 + ResNet34); attention weights only the bottleneck's input, never the target, so the trainable
attention cannot shrink the loss by rescaling what it is compared with (anomaly_spec.md §4.2.2).

Registered models (``fgkd.models.registry``, ``task="anomaly"``):

* ``rd``   — RD4AD: one teacher (WRN50-2), MFF + OCE (``oce_width_per_group`` 128 official | 64 anomalib),
  de-ResNet student, flattened cosine loss; Table 7's baseline;
* ``rd2t`` — paper 001 (final model): WRN50-2 + ResNet34, MS-CAM (r = 8) on every teacher level, one MFF per
  teacher to 16×16×3072 (ResNet34's widened, its level 3 by a 1×1 conv), iAFF of the two MFF outputs, OCE to
  8×8×2048, the inverse-block student, per-pixel cosine loss (Eq. 2).

Every component is an option, so the cumulative rows of Table 7 are configs (conf/experiment/ad_table7.yaml):
``decoder: de_resnet|inverse``, ``encoder2: null|{name, weights}``, ``attention``, ``fuse: iaff|add``,
``fusion: per_teacher|concat_first`` (MS-CAM on the concatenated maps and one MFF; no iAFF then), ``r``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fgkd.models.anomaly.components.anomaly_map import FUSIONS, anomaly_map, image_scores
from fgkd.models.anomaly.components.attention import MSCAM, IterativeAFF
from fgkd.models.anomaly.components.bottleneck import MultiScaleFusion, OneClassEmbedding, kaiming_init
from fgkd.models.anomaly.components.decoders import DeResNet, InverseBlockDecoder
from fgkd.models.anomaly.components.encoder import FrozenEncoder, encoder_spec
from fgkd.models.anomaly.reverse_distillation.loss import (
    LOSS_FORMS,
    flat_cosine_loss,
    pixel_cosine_loss,
    reverse_distillation_loss,
)
from fgkd.models.registry import check_options, register_model

DECODERS = ("de_resnet", "inverse")
FUSION_MODES = ("per_teacher", "concat_first")
FUSE_OPS = ("iaff", "add")
_BOTTLENECK_ENCODERS = ("wide_resnet50_2", "resnet50")


class ReverseDistillation(nn.Module):
    """Teacher encoder(s), one-class bottleneck and student decoder (module docstring)."""

    def __init__(self, encoder: str | Mapping[str, Any] = "wide_resnet50_2",
                 encoder2: str | Mapping[str, Any] | None = None, *, decoder: str = "de_resnet",
                 attention: bool = False, r: int = 8, fusion: str = "per_teacher", fuse: str = "iaff",
                 oce_blocks: int = 3, oce_width_per_group: int = 128, decoder_branch2_bn: bool = True,
                 loss: str = "flat", map_fusion: str = "sum", sigma: float = 4.0) -> None:
        super().__init__()
        for key, value, allowed in (("decoder", decoder, DECODERS), ("fusion", fusion, FUSION_MODES),
                                    ("fuse", fuse, FUSE_OPS), ("loss", loss, LOSS_FORMS),
                                    ("map_fusion", map_fusion, FUSIONS)):
            if value not in allowed:
                raise ValueError(f"model.{key}={value!r}: choose one of {', '.join(allowed)}")
        specs = [s for s in (encoder_spec(encoder), encoder_spec(encoder2)) if s is not None]
        self.encoders = nn.ModuleList(FrozenEncoder(s["name"], weights=s["weights"]) for s in specs)
        self.loss_form, self.map_fusion, self.sigma = loss, map_fusion, float(sigma)
        self.fusion = fusion if len(specs) == 2 else "single"
        per_teacher = [e.channels for e in self.encoders]
        self.target_channels = tuple(sum(c[k] for c in per_teacher) for k in range(3))
        path = per_teacher[0][2]  # the first teacher's level-3 width (WRN50-2: 1024 → MFF 3072)

        def attention_for(channels: Sequence[int]) -> nn.ModuleList:
            return nn.ModuleList(MSCAM(c, r) if attention else nn.Identity() for c in channels)

        if self.fusion == "concat_first":
            self.attention = nn.ModuleList([attention_for(self.target_channels)])
            self.mff = nn.ModuleList([MultiScaleFusion(self.target_channels, path)])
        else:
            self.attention = nn.ModuleList(attention_for(c) for c in per_teacher)
            self.mff = nn.ModuleList(MultiScaleFusion(c, path) for c in per_teacher)
        fused = self.mff[0].out_channels
        self.fuse_op = fuse if len(self.mff) == 2 else None
        self.iaff = IterativeAFF(fused, r) if self.fuse_op == "iaff" else None
        block = "bottleneck" if specs[0]["name"] in _BOTTLENECK_ENCODERS else "basic"
        self.oce = OneClassEmbedding(fused, block, oce_blocks, oce_width_per_group)
        if decoder == "de_resnet":
            if len(specs) == 2:
                raise ValueError("model.decoder=de_resnet rebuilds one teacher's channels; two teachers need "
                                 "model.decoder=inverse (paper 001's student)")
            blocks = (2, 2, 2) if specs[0]["name"] == "resnet18" else (3, 4, 6)
            width = 128 if specs[0]["name"].startswith("wide_") else 64
            self.decoder = DeResNet(self.oce.out_channels, block, blocks, width)
        else:
            self.decoder = InverseBlockDecoder(self.oce.out_channels, self.target_channels, decoder_branch2_bn)
        if tuple(self.decoder.out_channels) != self.target_channels:
            raise ValueError(f"decoder channels {self.decoder.out_channels} != teacher channels {self.target_channels}")
        for part in (self.attention, self.mff, self.iaff, self.oce, self.decoder):
            if part is not None:
                kaiming_init(part)

    # -- features -----------------------------------------------------------------------------------------
    def teacher_features(self, images: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """``(per-teacher levels, target levels)``; the target is the per-level concatenation."""
        per_teacher = [encoder(images) for encoder in self.encoders]
        if len(per_teacher) == 1:
            return per_teacher, per_teacher[0]
        return per_teacher, [torch.cat(levels, dim=1) for levels in zip(*per_teacher, strict=True)]

    def bottleneck(self, per_teacher: list[list[torch.Tensor]], target: list[torch.Tensor]) -> torch.Tensor:
        inputs = [target] if self.fusion == "concat_first" else per_teacher
        fused = [mff([att(f) for att, f in zip(attention, levels, strict=True)])
                 for mff, attention, levels in zip(self.mff, self.attention, inputs, strict=True)]
        if len(fused) == 1:
            z = fused[0]
        elif self.iaff is not None:
            z = self.iaff(fused[0], fused[1])
        else:
            z = fused[0] + fused[1]
        return self.oce(z)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(teacher levels, student levels)``, each ``[stride 4, stride 8, stride 16]``."""
        per_teacher, target = self.teacher_features(images)
        return target, self.decoder(self.bottleneck(per_teacher, target))

    # -- objectives and maps ------------------------------------------------------------------------------
    def loss(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        return reverse_distillation_loss(teacher, student, self.loss_form)

    @torch.no_grad()
    def loss_parts(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both loss forms, logged beside the loss (anomaly_spec.md §4.2.5)."""
        return {"loss_flat": flat_cosine_loss(teacher, student), "loss_pixel": pixel_cosine_loss(teacher, student)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, blur_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps [B, H, W] at the input size, image scores [B])``; ``blur_dtype``: see ``gaussian_blur``."""
        teacher, student = self(images)
        maps = anomaly_map(teacher, student, tuple(images.shape[-2:]), self.map_fusion, self.sigma, blur_dtype)
        return maps, image_scores(maps)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> dict[str, Any]:
        return {"encoders": [e.name for e in self.encoders], "encoder_weights": [e.weights for e in self.encoders],
                "target_channels": list(self.target_channels), "fusion": self.fusion, "fuse": self.fuse_op,
                "attention": any(isinstance(m, MSCAM) for m in self.attention.modules()),
                "decoder": type(self.decoder).__name__, "loss": self.loss_form}


_OPTIONS = ("encoder", "encoder2", "decoder", "attention", "r", "fusion", "fuse", "oce_blocks",
            "oce_width_per_group", "decoder_branch2_bn", "loss", "map_fusion", "sigma")


@register_model("rd", task="anomaly")
def rd(num_classes: int = 1, **options: Any) -> ReverseDistillation:
    """RD4AD (one WRN50-2 teacher, de-ResNet student, flattened cosine loss)."""
    check_options("rd", options, _OPTIONS)
    return ReverseDistillation(**{"encoder": "wide_resnet50_2", "decoder": "de_resnet", "loss": "flat", **options})


@register_model("rd2t", task="anomaly")
def rd2t(num_classes: int = 1, **options: Any) -> ReverseDistillation:
    """Paper 001's final model (WRN50-2 + ResNet34, MS-CAM r=8, iAFF, inverse-block student, per-pixel loss)."""
    check_options("rd2t", options, _OPTIONS)
    defaults = {"encoder": "wide_resnet50_2", "encoder2": "resnet34", "decoder": "inverse", "attention": True,
                "r": 8, "fusion": "per_teacher", "fuse": "iaff", "loss": "pixel"}
    return ReverseDistillation(**{**defaults, **options})
