"""BSDRD (Tang, Zhang & Liu, Sci. Rep. 2025, paper 003): binary struct and detail reverse distillation.

Only the abstract and the Fig. 1 caption are public (anomaly_spec.md §3.1), so everything below the sentence
level is this project's choice, each a key of ``conf/model/bsdrd.yaml`` (README: "BSDRD: what follows the
abstract, what is ours"). From the abstract: one pre-trained teacher (the frozen timm encoder of the RD models)
gives multi-scale features to two students with different roles —

* **struct student** ("dynamically fuses and compresses multi-scale features"): ``DynamicMultiScaleFusion``
  (the MFF branches weighted by learned softmax logits or per-image attention, ``struct_fusion``) → RD4AD's
  one-class embedding (OCE) → RD4AD's de-ResNet decoder, rebuilding all three teacher levels;
* **detail student** ("wavelet transform … decompose high-level features into low-frequency and high-frequency
  components"): a J-level 2-D DWT (``wavelet``, ``wavelet_level``, ``wavelet_mode``) of the teacher's deepest
  level into LL and LH/HL/HH; a low-frequency path (two 3×3 conv-BN-ReLU to ``detail_width`` and back) and a
  high-frequency path per level (the used bands stacked, 1×1 then 3×3 down to ``detail_width``, back to the
  bands); the bands not in ``bands`` are zero; the inverse DWT back to stride 16; then paper 001's inverse
  blocks up to strides 8 and 4 — all three levels again;
* **MD-GFLoss** (``md_gfloss``; ``fgkd.models.anomaly.bsdrd.loss``) added to each student's own RD loss
  (``student_loss``: RD4AD's flattened cosine by default);
* the anomaly map: per student the levels' ``1 − cos`` maps summed (RD4AD), then the students fused
  (``student_fusion``: ``sum``, ``max``, or ``normalized`` — each student's map divided by its running mean on
  the defect-free training batches, a weight learned from the training data so both count alike), Gaussian
  σ = 4, image score = the maximum.

Ablations (``students: both|struct|detail``, ``md_gfloss: true|false``) change what is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fgkd.models.anomaly.bsdrd.loss import MDGFLoss
from fgkd.models.anomaly.components.anomaly_map import (
    cosine_distance_maps,
    fuse_maps,
    gaussian_blur,
    image_scores,
)
from fgkd.models.anomaly.components.bottleneck import (
    DynamicMultiScaleFusion,
    OneClassEmbedding,
    conv_bn_relu,
    kaiming_init,
)
from fgkd.models.anomaly.components.decoders import DeResNet, InverseBlock
from fgkd.models.anomaly.components.encoder import FrozenEncoder, encoder_spec
from fgkd.models.anomaly.components.wavelet import BANDS, WaveletTransform2d
from fgkd.models.anomaly.reverse_distillation.loss import (
    LOSS_FORMS,
    flat_cosine_loss,
    pixel_cosine_loss,
    reverse_distillation_loss,
)
from fgkd.models.registry import check_options, register_model

STUDENT_SETS = {"both": ("struct", "detail"), "struct": ("struct",), "detail": ("detail",)}
STUDENT_FUSIONS = ("sum", "max", "normalized")
_HIGH_BANDS = ("lh", "hl", "hh")
_BOTTLENECK_ENCODERS = ("wide_resnet50_2", "resnet50")
_SCALE_MOMENTUM = 0.1


def conv_bn(c_in: int, c_out: int, kernel: int = 1) -> nn.Sequential:
    """Conv + BN without ReLU (wavelet coefficients are signed)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(c_out))


class StructStudent(nn.Module):
    """Dynamic MFF → OCE → de-ResNet (module docstring)."""

    def __init__(self, channels: Sequence[int], encoder_name: str, weighting: str = "softmax", r: int = 16,
                 oce_blocks: int = 3, oce_width_per_group: int = 128) -> None:
        super().__init__()
        block = "bottleneck" if encoder_name in _BOTTLENECK_ENCODERS else "basic"
        self.fusion = DynamicMultiScaleFusion(channels, channels[2], weighting, r)
        self.oce = OneClassEmbedding(self.fusion.out_channels, block, oce_blocks, oce_width_per_group)
        blocks = (2, 2, 2) if encoder_name == "resnet18" else (3, 4, 6)
        width = 128 if encoder_name.startswith("wide_") else 64
        self.decoder = DeResNet(self.oce.out_channels, block, blocks, width)
        if tuple(self.decoder.out_channels) != tuple(channels):
            raise ValueError(f"struct student channels {self.decoder.out_channels} != teacher {tuple(channels)}")

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.oce(self.fusion(levels)))


class DetailStudent(nn.Module):
    """DWT of the deepest teacher level, separate low/high-frequency paths, inverse DWT, inverse blocks up."""

    def __init__(self, channels: Sequence[int], width: int = 512, wave: str = "haar", level: int = 1,
                 mode: str = "reflect", bands: Sequence[str] = BANDS, branch2_bn: bool = True) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        bands = tuple(str(b).lower() for b in bands)
        if not bands or set(bands) - set(BANDS) or len(set(bands)) != len(bands):
            raise ValueError(f"model.bands={list(bands)}: a non-empty subset of {', '.join(BANDS)}")
        self.bands = tuple(b for b in BANDS if b in bands)
        self.dwt = WaveletTransform2d(wave, level, mode)
        self.high_index = [i for i, b in enumerate(_HIGH_BANDS) if b in self.bands]
        n = len(self.high_index)
        self.low_in = self.low_out = None
        if "ll" in self.bands:
            self.low_in = nn.Sequential(conv_bn_relu(c3, width), conv_bn_relu(width, width))
            self.low_out = nn.Sequential(conv_bn_relu(width, width), conv_bn(width, c3))
        self.high_in = nn.ModuleList(nn.Sequential(conv_bn_relu(n * c3, width, kernel=1), conv_bn_relu(width, width))
                                     for _ in range(self.dwt.level if n else 0))
        self.high_out = nn.ModuleList(nn.Sequential(conv_bn_relu(width, width), conv_bn(width, n * c3))
                                      for _ in range(self.dwt.level if n else 0))
        self.head = conv_bn_relu(c3, c3, kernel=1)
        self.d2 = InverseBlock(c3, c2, branch2_bn)
        self.d1 = InverseBlock(c2, c1, branch2_bn)

    def _high(self, j: int, bands: torch.Tensor) -> torch.Tensor:
        if not self.high_index:
            return torch.zeros_like(bands)
        b, _, c, h, w = bands.shape
        used = bands[:, self.high_index].flatten(1, 2)
        rebuilt = self.high_out[j](self.high_in[j](used)).view(b, len(self.high_index), c, h, w)
        full = [torch.zeros_like(bands[:, 0])] * len(_HIGH_BANDS)
        for slot, band in zip(self.high_index, rebuilt.unbind(1), strict=True):
            full[slot] = band
        return torch.stack(full, dim=1)

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = levels[2]
        ll, highs = self.dwt(x)
        ll_hat = self.low_out(self.low_in(ll)) if self.low_in is not None else torch.zeros_like(ll)
        highs_hat = [self._high(j, h) for j, h in enumerate(highs)]
        f3 = self.head(self.dwt.inverse(ll_hat, highs_hat, tuple(x.shape[-2:])))
        f2 = self.d2(f3)
        return [self.d1(f2), f2, f3]


class BSDRD(nn.Module):
    """One frozen teacher, a struct and/or a detail student, MD-GFLoss (module docstring)."""

    def __init__(self, encoder: str | Mapping[str, Any] = "wide_resnet50_2", *, students: str = "both",
                 struct_fusion: str = "softmax", r: int = 16, oce_blocks: int = 3, oce_width_per_group: int = 128,
                 detail_width: int = 512, wavelet: str = "haar", wavelet_level: int = 1,
                 wavelet_mode: str = "reflect", bands: Sequence[str] = BANDS, decoder_branch2_bn: bool = True,
                 student_loss: str = "flat", md_gfloss: bool = True, md_gates: str = "fixed",
                 md_weights: Mapping[str, float] | None = None, feature_gates: bool = True,
                 md_weight: float = 1.0, student_fusion: str = "sum", sigma: float = 4.0) -> None:
        super().__init__()
        for key, value, allowed in (("students", students, tuple(STUDENT_SETS)), ("student_loss", student_loss, LOSS_FORMS),
                                    ("student_fusion", student_fusion, STUDENT_FUSIONS)):
            if value not in allowed:
                raise ValueError(f"model.{key}={value!r}: choose one of {', '.join(allowed)}")
        spec = encoder_spec(encoder)
        assert spec is not None
        self.encoder = FrozenEncoder(spec["name"], weights=spec["weights"])
        channels = self.encoder.channels
        self.target_channels = tuple(channels)
        built: dict[str, nn.Module] = {}
        if "struct" in STUDENT_SETS[students]:
            built["struct"] = StructStudent(channels, spec["name"], struct_fusion, r, oce_blocks, oce_width_per_group)
        if "detail" in STUDENT_SETS[students]:
            built["detail"] = DetailStudent(channels, detail_width, wavelet, wavelet_level, wavelet_mode, bands,
                                            decoder_branch2_bn)
        self.students = nn.ModuleDict(built)
        self.student_loss, self.student_fusion, self.sigma = student_loss, student_fusion, float(sigma)
        self.md_weight = float(md_weight)
        self.mdgf = MDGFLoss(len(channels), md_gates, md_weights, feature_gates) if md_gfloss else None
        # each student's running mean map level on defect-free training batches (student_fusion=normalized)
        self.register_buffer("map_scale", torch.ones(len(built)))
        for student in self.students.values():
            kaiming_init(student)

    # -- features -----------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
        """``(teacher levels, {student: levels})``, levels ``[stride 4, stride 8, stride 16]``."""
        teacher = self.encoder(images)
        return teacher, {name: student(teacher) for name, student in self.students.items()}

    # -- objectives -----------------------------------------------------------------------------------------
    def loss(self, teacher: Sequence[torch.Tensor], students: Mapping[str, Sequence[torch.Tensor]]) -> torch.Tensor:
        total = sum(reverse_distillation_loss(teacher, s, self.student_loss) for s in students.values())
        if self.mdgf is not None:
            terms = sum(self.mdgf.terms(teacher, s) for s in students.values())
            total = total + self.md_weight * self.mdgf.fuse(terms)
        if self.training:
            self._update_map_scale(teacher, students)
        return total

    @torch.no_grad()
    def _update_map_scale(self, teacher: Sequence[torch.Tensor], students: Mapping[str, Sequence[torch.Tensor]]) -> None:
        level = torch.stack([sum(m.mean() for m in cosine_distance_maps(teacher, s)) for s in students.values()])
        self.map_scale.mul_(1 - _SCALE_MOMENTUM).add_(_SCALE_MOMENTUM * level.to(self.map_scale))

    @torch.no_grad()
    def loss_parts(self, teacher: Sequence[torch.Tensor], students: Mapping[str, Sequence[torch.Tensor]]
                   ) -> dict[str, torch.Tensor]:
        """What the training log shows beside the loss: each student's RD terms, MD-GFLoss, the gates."""
        parts: dict[str, torch.Tensor] = {}
        for name, s in students.items():
            parts[f"{name}_flat"] = flat_cosine_loss(teacher, s)
            parts[f"{name}_pixel"] = pixel_cosine_loss(teacher, s)
        if self.mdgf is not None:
            parts["md_gfloss"] = self.mdgf.fuse(sum(self.mdgf.terms(teacher, s) for s in students.values()))
            parts.update(self.mdgf.gate_values())
        return parts

    # -- maps -----------------------------------------------------------------------------------------------
    def student_maps(self, teacher: Sequence[torch.Tensor], students: Mapping[str, Sequence[torch.Tensor]],
                     size: tuple[int, int]) -> torch.Tensor:
        """``[S, B, H, W]``: each student's unblurred map (levels summed)."""
        return torch.stack([fuse_maps(cosine_distance_maps(teacher, s), size, "sum") for s in students.values()])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, blur_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps [B, H, W] at the input size, image scores [B])``; ``blur_dtype``: see ``gaussian_blur``."""
        teacher, students = self(images)
        per_student = self.student_maps(teacher, students, tuple(images.shape[-2:]))
        if self.student_fusion == "max":
            fused = per_student.amax(0)
        elif self.student_fusion == "normalized":
            fused = (per_student / self.map_scale.clamp_min(1e-6).view(-1, 1, 1, 1)).sum(0)
        else:
            fused = per_student.sum(0)
        maps = gaussian_blur(fused, self.sigma, dtype=blur_dtype)
        return maps, image_scores(maps)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> dict[str, Any]:
        return {"encoders": [self.encoder.name], "encoder_weights": [self.encoder.weights],
                "students": list(self.students), "md_gfloss": self.mdgf is not None,
                "target_channels": list(self.target_channels), "student_fusion": self.student_fusion}


_OPTIONS = ("encoder", "students", "struct_fusion", "r", "oce_blocks", "oce_width_per_group", "detail_width",
            "wavelet", "wavelet_level", "wavelet_mode", "bands", "decoder_branch2_bn", "student_loss", "md_gfloss",
            "md_gates", "md_weights", "feature_gates", "md_weight", "student_fusion", "sigma")


@register_model("bsdrd", task="anomaly")
def bsdrd(num_classes: int = 1, **options: Any) -> BSDRD:
    """BSDRD: struct + detail students, MD-GFLoss (our reading of paper 003's abstract; see the module docstring)."""
    check_options("bsdrd", options, _OPTIONS)
    return BSDRD(**options)


#: the ablation rows of ``sweep.py ad_mtd`` as named variants (their own model configs and artifact names)
_VARIANTS = {"bsdrd_struct": {"students": "struct"}, "bsdrd_detail": {"students": "detail"},
             "bsdrd_no_mdgf": {"md_gfloss": False}}


def _register_variant(name: str, defaults: dict[str, Any]) -> None:
    @register_model(name, task="anomaly")
    def variant(num_classes: int = 1, **options: Any) -> BSDRD:
        check_options(name, options, _OPTIONS)
        return BSDRD(**{**defaults, **options})

    variant.__doc__ = f"BSDRD ablation {name}: {defaults}."


for _name, _defaults in _VARIANTS.items():
    _register_variant(_name, _defaults)
