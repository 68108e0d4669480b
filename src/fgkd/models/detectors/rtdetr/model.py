"""RT-DETR as an fgkd Detector: backbone (PResNet-vd or HGNetv2) -> hybrid encoder -> query-selection decoder.

Variants (the RT-DETR paper, Zhao et al. CVPR 2024, Table 2; configs in detectors.md §3.4 and §4):

==============  ==========================================  =========  ==========  ======================
name            backbone                                    expansion  dec layers  reference parameters
==============  ==========================================  =========  ==========  ======================
``rtdetr_r18``  PResNet-18-vd                               0.5        3           20 M (paper)
``rtdetr_r50``  PResNet-50-vd, stem frozen, frozen BN       1.0        6           42 M (paper)
``rtdetr_l``    HGNetv2-L (BN eps 1e-3, Ultralytics layout)  1.0        6           32,970,476 at nc = 80
                                                                                    (Ultralytics 8.2.0
                                                                                    ``rtdetr-l.yaml``)
==============  ==========================================  =========  ==========  ======================

``raw`` (opaque outside this family): ``boxes [L, B, Q, 4]`` and ``logits [L, B, Q, nc]`` (every decoder layer
in training, the ``eval_idx`` layer in eval; boxes cxcywh in [0, 1]), the encoder's top-k ``enc_boxes`` /
``enc_logits``, the denoising outputs ``dn_boxes`` / ``dn_logits`` with their metadata ``dn`` (training with
targets only), and ``imgsz``. Post-processing is NMS-free (:func:`fgkd.models.detectors.ops.select_top_queries`).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import box_convert

from fgkd.models.detectors.base import Detector, TapInfo, register_detector
from fgkd.models.detectors.common import ConvBNAct
from fgkd.models.detectors.ops import select_top_queries
from fgkd.models.detectors.rtdetr.backbones import HGNetv2, PResNet
from fgkd.models.detectors.rtdetr.criterion import RTDETRCriterion, normalized_targets
from fgkd.models.detectors.rtdetr.decoder import RTDETRDecoder
from fgkd.models.detectors.rtdetr.denoising import denoising_queries
from fgkd.models.detectors.rtdetr.encoder import HybridEncoder
from fgkd.models.detectors.yolov6_blocks import RepVGGBlock
from fgkd.models.registry import check_options

#: name -> (backbone, its options, encoder expansion, decoder layers, denoising padding class, BN eps)
VARIANTS: dict[str, dict[str, Any]] = {
    "r18": {"backbone": "presnet", "depth": 18, "expansion": 0.5, "layers": 3, "dn_padding_class": True,
            "bn_eps": 1e-5, "freeze_stem": False, "frozen_norm": False},
    "r50": {"backbone": "presnet", "depth": 50, "expansion": 1.0, "layers": 6, "dn_padding_class": True,
            "bn_eps": 1e-5, "freeze_stem": True, "frozen_norm": True},
    "l": {"backbone": "hgnetv2", "expansion": 1.0, "layers": 6, "dn_padding_class": False, "bn_eps": 1e-3},
}
#: tap name -> (module path per backbone kind, stride)
BACKBONE_TAPS = {
    "presnet": {"backbone.p2": "backbone.stage2", "backbone.p3": "backbone.stage3", "backbone.p4": "backbone.stage4",
                "backbone.p5": "backbone.stage5"},
    "hgnetv2": {"backbone.p2": "backbone.layers.1", "backbone.p3": "backbone.layers.3",
                "backbone.p4": "backbone.layers.7", "backbone.p5": "backbone.layers.9"},
}
NECK_TAPS = {"neck.p3": "encoder.fpn_blocks.1", "neck.p4": "encoder.pan_blocks.0", "neck.p5": "encoder.pan_blocks.1"}
LOSS_OPTIONS = ("vfl_gain", "l1_gain", "giou_gain", "cost_class", "cost_bbox", "cost_giou", "matcher_alpha",
                "matcher_gamma", "vfl_alpha", "vfl_gamma")
OPTIONS = ("num_queries", "num_denoising", "label_noise_ratio", "box_noise_scale", "eval_idx", *LOSS_OPTIONS)


class RTDETR(Detector):
    """Real-time DETR (module docstring); ``loss`` is a per-box mean (the criterion divides by the box count)."""

    family = "rtdetr"
    loss_reduction = "mean"
    nms_free = True
    default_taps = ["backbone.p3", "backbone.p4", "backbone.p5"]

    def __init__(self, num_classes: int, variant: str = "r18", *, num_queries: int = 300, num_denoising: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0, eval_idx: int = -1,
                 **loss: float) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown RT-DETR variant {variant!r}; choose one of {sorted(VARIANTS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_queries < 1 or num_denoising < 0 or not 0 <= label_noise_ratio <= 1 or box_noise_scale < 0:
            raise ValueError("RT-DETR: num_queries >= 1, num_denoising >= 0, label_noise_ratio in [0, 1] and "
                             f"box_noise_scale >= 0, got {num_queries}, {num_denoising}, {label_noise_ratio}, "
                             f"{box_noise_scale}")
        spec = VARIANTS[variant]
        self.variant, self.num_classes = variant, num_classes
        self.num_denoising, self.label_noise_ratio, self.box_noise_scale = num_denoising, label_noise_ratio, box_noise_scale
        if spec["backbone"] == "presnet":
            self.backbone = PResNet(spec["depth"], freeze_stem=spec["freeze_stem"], frozen_norm=spec["frozen_norm"],
                                    bn_eps=spec["bn_eps"])
        else:
            self.backbone = HGNetv2(bn_eps=spec["bn_eps"])
        self.encoder = HybridEncoder(self.backbone.stage_channels, expansion=spec["expansion"], bn_eps=spec["bn_eps"])
        self.decoder = RTDETRDecoder(num_classes, self.encoder.out_channels, num_queries=num_queries,
                                     layers=spec["layers"], eval_idx=eval_idx,
                                     dn_padding_class=spec["dn_padding_class"], bn_eps=spec["bn_eps"])
        self.criterion = RTDETRCriterion(num_classes, **loss)
        p2_channels = (64 * (4 if spec.get("depth", 18) >= 50 else 1)) if spec["backbone"] == "presnet" else 128
        channels = dict(zip(("backbone.p2", "backbone.p3", "backbone.p4", "backbone.p5"),
                            (p2_channels, *self.backbone.stage_channels), strict=True))
        strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
        self.taps = {name: TapInfo(path, channels[name], strides[name[-2:]])
                     for name, path in BACKBONE_TAPS[spec["backbone"]].items()}
        self.taps.update({name: TapInfo(path, self.encoder.out_channels[0], strides[name[-2:]])
                          for name, path in NECK_TAPS.items()})

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, Any]:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"RT-DETR expects float[B,3,H,W] with H, W multiples of 32, got {tuple(images.shape)}")
        imgsz = (int(images.shape[-2]), int(images.shape[-1]))
        features = self.encoder(self.backbone(images))
        denoising = None
        if self.training and targets is not None:
            labels, boxes = normalized_targets(targets, images.shape[0], imgsz)
            tokens = sum((imgsz[0] // s) * (imgsz[1] // s) for s in (8, 16, 32))
            denoising = denoising_queries(labels, boxes, self.decoder.denoising_class_embed, self.num_classes,
                                          self.decoder.queries_for(tokens), self.num_denoising, self.label_noise_ratio,
                                          self.box_noise_scale)
        raw = self.decoder(features, denoising)
        raw["imgsz"] = imgsz
        raw["dn"] = None if denoising is None else {k: denoising[k] for k in ("groups", "positive", "counts")}
        return raw

    def decode(self, raw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(boxes [B, Q, 4] xyxy px, scores [B, Q, nc])`` of the last decoded layer."""
        h, w = raw["imgsz"]
        scale = torch.tensor([w, h, w, h], dtype=raw["boxes"].dtype, device=raw["boxes"].device)
        return box_convert(raw["boxes"][-1], "cxcywh", "xyxy") * scale, raw["logits"][-1].sigmoid()

    def kd_logits(self, raw: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError(
            "logit KD (kd=kl) is not defined for query-based heads: RT-DETR's queries are selected per image, so "
            "teacher and student queries do not correspond; use a feature KD loss (kd=cs|mse|mmd|cwd) on the "
            "backbone or encoder taps")

    def loss(self, raw: dict[str, Any], targets: torch.Tensor, epoch: int | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.criterion(raw, targets)

    @torch.no_grad()
    def postprocess(self, raw: dict[str, Any], conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                    multi_label: bool = False) -> list[dict[str, torch.Tensor]]:
        """NMS-free (``iou`` is unused): the best queries (see ``select_top_queries``)."""
        boxes, scores = self.decode(raw)
        return select_top_queries(boxes, scores, conf, max_det, multi_label=multi_label)

    @torch.no_grad()
    def fuse(self) -> RTDETR:
        """Fold every BatchNorm (frozen ones too) into its conv and re-parameterise the RepVGG blocks; eval
        outputs are unchanged. Returns self."""
        self.eval()
        for module in list(self.modules()):
            if isinstance(module, ConvBNAct):
                module.fuse()
        for module in list(self.modules()):
            if isinstance(module, RepVGGBlock):
                module.fuse()
        return self


def _build(variant: str, num_classes: int, **overrides: Any) -> RTDETR:
    check_options(f"rtdetr_{variant}", overrides, OPTIONS)
    return RTDETR(num_classes, variant, **overrides)


@register_detector("rtdetr_r18")
def rtdetr_r18(num_classes: int, **overrides: Any) -> RTDETR:
    return _build("r18", num_classes, **overrides)


@register_detector("rtdetr_r50")
def rtdetr_r50(num_classes: int, **overrides: Any) -> RTDETR:
    return _build("r50", num_classes, **overrides)


@register_detector("rtdetr_l")
def rtdetr_l(num_classes: int, **overrides: Any) -> RTDETR:
    return _build("l", num_classes, **overrides)
