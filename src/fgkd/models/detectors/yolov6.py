"""YOLOv6 v3.0/v4.0 (n/s/m/l): a clean-room PyTorch reimplementation from shared/reference/detectors.md §2.

Backbone EfficientRep (n/s) or CSPBepBackbone (m/l), both returning 4 maps (P2..P5, ``fuse_P2``); neck
RepBiFPAN / CSPRepBiFPAN (BiFusion nodes) returning P3..P5; decoupled anchor-free EffiDeHead. v3.0 and
v4.0 share these P5 configs (detectors.md §2.2). Registered as ``yolov6n``, ``yolov6s``, ``yolov6m``,
``yolov6l``; ``model.fuse()`` converts for deployment (Conv+BN folding + RepVGG re-parameterisation).
Parameter counts equal the reference's (shared/reference/param_counts.md) minus its 34 frozen DFL
projection weights: the DFL expectation lives in the loss/decoder instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fgkd.models.detectors.base import Detector, DetectorOutput, TapInfo, register_detector
from fgkd.models.detectors.common import ConvBNAct
from fgkd.models.detectors.yolov6_blocks import (
    CSPSPPF,
    SPPF,
    BepC3,
    BiFusion,
    BlockFactory,
    block_factory,
    fuse_blocks,
    rep_stage,
)
from fgkd.models.registry import check_options

BACKBONE_REPEATS = (1, 6, 12, 18, 6)
BACKBONE_CHANNELS = (64, 128, 256, 512, 1024)
NECK_REPEATS = (12, 12, 12, 12)
NECK_CHANNELS = (256, 128, 128, 256, 256, 512)
STRIDES = (8, 16, 32)
CLS_PRIOR_PROB = 0.01
IOU_TYPES = ("siou", "giou", "ciou", "diou", "iou")  # accepted by YOLOv6Loss (reference: n siou, else giou)


def scale_repeats(repeats: int, depth: float) -> int:
    """``build_network``'s depth rule: single blocks stay single, others scale and round (at least 1)."""
    return max(round(repeats * depth), 1) if repeats > 1 else repeats


def scale_channels(channels: int, width: float) -> int:
    """``build_network``'s width rule: round up to a multiple of 8."""
    return math.ceil(channels * width / 8) * 8


@dataclass(frozen=True)
class YOLOv6Spec:
    """One size of the family (configs/yolov6{n,s,m,l}.py, detectors.md §2.1)."""

    depth: float
    width: float
    csp_e: float | None  # None -> EfficientRep + RepBiFPAN; else CSPBep + CSPRepBiFPAN with this ratio
    cspsppf: bool
    training_mode: str
    iou_type: str
    bins: int  # 0: plain ltrb (use_dfl=False); 17: DFL with reg_max 16


SPECS: dict[str, YOLOv6Spec] = {
    "n": YOLOv6Spec(0.33, 0.25, None, True, "repvgg", "siou", 0),
    "s": YOLOv6Spec(0.33, 0.50, None, True, "repvgg", "giou", 0),
    "m": YOLOv6Spec(0.60, 0.75, 2 / 3, False, "repvgg", "giou", 17),
    "l": YOLOv6Spec(1.00, 1.00, 1 / 2, False, "conv_silu", "giou", 17),
}


class YOLOv6Backbone(nn.Module):
    """EfficientRep (``csp_e=None``) or CSPBepBackbone: stem, then four stride-2 stages ``p2``..``p5``.

    Each stage is a downsampling 3×3 block followed by a RepBlock (EfficientRep) or a BepC3 (CSPBep); ``p5``
    ends with the SPPF variant. ``forward`` returns ``(p2, p3, p4, p5)`` at strides 4/8/16/32.
    """

    def __init__(
        self,
        channels: list[int],
        repeats: list[int],
        block: BlockFactory,
        csp_e: float | None,
        cspsppf: bool,
        act: str,
    ) -> None:
        super().__init__()

        def stage(c: int, n: int) -> nn.Module:
            return rep_stage(c, c, n, block) if csp_e is None else BepC3(c, c, n, csp_e, block, act)

        c = channels
        self.stem = block(3, c[0], 2)
        self.p2 = nn.Sequential(block(c[0], c[1], 2), stage(c[1], repeats[1]))
        self.p3 = nn.Sequential(block(c[1], c[2], 2), stage(c[2], repeats[2]))
        self.p4 = nn.Sequential(block(c[2], c[3], 2), stage(c[3], repeats[3]))
        pool = CSPSPPF(c[4], c[4], 5, act=act) if cspsppf else SPPF(c[4], c[4], 5, act=act)
        self.p5 = nn.Sequential(block(c[3], c[4], 2), stage(c[4], repeats[4]), pool)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p2 = self.p2(self.stem(x))
        p3 = self.p3(p2)
        p4 = self.p4(p3)
        return p2, p3, p4, self.p5(p4)


class YOLOv6Neck(nn.Module):
    """RepBiFPANNeck (``csp_e=None``) or CSPRepBiFPANNeck.

    Top-down: P5 is reduced (1×1) and fused with P4 and P3 (BiFusion), a stage refines it, it is reduced
    again and fused with P3 and P2, giving the P3 output. Bottom-up: 3×3-s2 downsampling concatenated
    with the matching reduced top-down map, then a stage, giving P4 and P5. Reduce/downsample convs are
    always ConvBNReLU. ``channels`` are the six scaled neck widths, ``backbone_channels`` the five backbone
    ones.
    """

    def __init__(
        self,
        backbone_channels: list[int],
        channels: list[int],
        repeats: list[int],
        block: BlockFactory,
        csp_e: float | None,
        act: str,
    ) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int, n: int) -> nn.Module:
            if csp_e is None:
                return rep_stage(c_in, c_out, n, block)
            return BepC3(c_in, c_out, n, csp_e, block, act)

        b, c = backbone_channels, channels
        self.reduce_p5 = ConvBNAct(b[4], c[0], 1, act="relu")
        self.fuse_p4 = BiFusion(b[3], b[2], c[0])
        self.stage_p4 = stage(c[0], c[0], repeats[0])
        self.reduce_p4 = ConvBNAct(c[0], c[1], 1, act="relu")
        self.fuse_p3 = BiFusion(b[2], b[1], c[1])
        self.p3 = stage(c[1], c[1], repeats[1])
        self.down_p3 = ConvBNAct(c[1], c[2], 3, 2, act="relu")
        self.p4 = stage(c[1] + c[2], c[3], repeats[2])
        self.down_p4 = ConvBNAct(c[3], c[4], 3, 2, act="relu")
        self.p5 = stage(c[0] + c[4], c[5], repeats[3])

    def forward(
        self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p2, p3, p4, p5 = feats
        top5 = self.reduce_p5(p5)
        top4 = self.reduce_p4(self.stage_p4(self.fuse_p4(top5, p4, p3)))
        out3 = self.p3(self.fuse_p3(top4, p3, p2))
        out4 = self.p4(torch.cat((self.down_p3(out3), top4), dim=1))
        out5 = self.p5(torch.cat((self.down_p4(out4), top5), dim=1))
        return out3, out4, out5


class EffiDeHead(nn.Module):
    """Decoupled anchor-free head: per level a 1×1 stem, then separate 3×3 ConvBNSiLU cls and reg towers
    and 1×1 predictions (``num_classes`` logits; ``4 * bins`` DFL logits, or 4 ltrb distances when
    ``bins == 0``).
    """

    def __init__(self, channels: list[int], num_classes: int, bins: int) -> None:
        super().__init__()
        reg_out = 4 * bins if bins > 0 else 4
        self.stems = nn.ModuleList(ConvBNAct(c, c, 1, act="silu") for c in channels)
        self.cls_convs = nn.ModuleList(ConvBNAct(c, c, 3, act="silu") for c in channels)
        self.reg_convs = nn.ModuleList(ConvBNAct(c, c, 3, act="silu") for c in channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(c, reg_out, 1) for c in channels)
        self.reset_prediction_parameters()

    @torch.no_grad()
    def reset_prediction_parameters(self) -> None:
        """Reference init: zero prediction weights; cls bias at the prior logit of p=0.01, reg bias 1."""
        for conv in self.cls_preds:
            conv.weight.zero_()
            conv.bias.fill_(-math.log((1 - CLS_PRIOR_PROB) / CLS_PRIOR_PROB))
        for conv in self.reg_preds:
            conv.weight.zero_()
            conv.bias.fill_(1.0)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> cls logits ``[B, A, nc]`` and box outputs ``[B, A, C]``, levels concatenated stride 8 first."""
        cls_out, box_out = [], []
        for i, x in enumerate(feats):
            x = self.stems[i](x)
            cls_out.append(self.cls_preds[i](self.cls_convs[i](x)).flatten(2))
            box_out.append(self.reg_preds[i](self.reg_convs[i](x)).flatten(2))
        return torch.cat(cls_out, 2).transpose(1, 2), torch.cat(box_out, 2).transpose(1, 2)


class YOLOv6(Detector):
    """YOLOv6 detector with the fgkd Detector contract (base.py).

    Taps: ``backbone.p2`` … ``backbone.p5`` (strides 4…32) and ``neck.p3`` … ``neck.p5``; the tap path is
    the module whose output is exactly that map. ``default_taps`` is the last K=3 backbone maps (P3, P4,
    P5), the paper's "last K backbone maps" (Eq. 5-6). The backbone also returns P2 (``fuse_P2``: it feeds
    the neck's BiFusion), so K is configurable: choose the tapped layers with ``kd.layers``
    (e.g. all four backbone maps for K=4).

    ``forward`` returns class **logits** (the reference head applies the sigmoid; here the loss does).
    """

    family = "yolov6"
    loss_reduction = "mean"  # detectors.md §3: the reference averages over the batch
    #: tap name -> output stride; module path = tap name; channels from the size (set in ``__init__``)
    TAP_STRIDES = {"backbone.p2": 4, "backbone.p3": 8, "backbone.p4": 16, "backbone.p5": 32,
                   "neck.p3": 8, "neck.p4": 16, "neck.p5": 32}
    default_taps = ["backbone.p3", "backbone.p4", "backbone.p5"]

    def __init__(
        self,
        num_classes: int,
        depth: float,
        width: float,
        csp_e: float | None = None,
        cspsppf: bool = True,
        training_mode: str = "repvgg",
        bins: int = 0,
        iou_type: str = "giou",
        loss_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if bins == 1 or bins < 0:
            raise ValueError(f"YOLOv6 bins must be 0 (plain ltrb) or >= 2 (DFL, reference 17), got {bins}")
        if iou_type not in IOU_TYPES:
            raise ValueError(f"YOLOv6 iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
        self.num_classes = num_classes
        self.bins = bins
        self.iou_type = iou_type
        self.training_mode = training_mode
        self.loss_kwargs = dict(loss_kwargs or {})
        block = block_factory(training_mode)
        act = "silu" if training_mode == "conv_silu" else "relu"
        backbone_channels = [scale_channels(c, width) for c in BACKBONE_CHANNELS]
        neck_channels = [scale_channels(c, width) for c in NECK_CHANNELS]
        backbone_repeats = [scale_repeats(n, depth) for n in BACKBONE_REPEATS]
        neck_repeats = [scale_repeats(n, depth) for n in NECK_REPEATS]
        self.backbone = YOLOv6Backbone(backbone_channels, backbone_repeats, block, csp_e, cspsppf, act)
        self.neck = YOLOv6Neck(backbone_channels, neck_channels, neck_repeats, block, csp_e, act)
        self.head = EffiDeHead([neck_channels[i] for i in (1, 3, 5)], num_classes, bins)
        channels = (*backbone_channels[1:], *(neck_channels[i] for i in (1, 3, 5)))
        self.taps = {name: TapInfo(name, c, stride)
                     for (name, stride), c in zip(self.TAP_STRIDES.items(), channels, strict=True)}
        self.strides = STRIDES
        # Built lazily on the first loss() call; kept in a plain dict so it never becomes a registered
        # sub-module (no state_dict entries, not part of EMA/optimizer parameter sets).
        self._criterion: dict[str, Any] = {}

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> DetectorOutput:
        from fgkd.models.detectors.ops import make_anchors

        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(
                f"YOLOv6 expects float[B,3,H,W] with H, W multiples of 32, got {tuple(images.shape)}"
            )
        feats = self.neck(self.backbone(images))
        cls, box = self.head(feats)
        anchors, strides = make_anchors(feats, self.strides, 0.5)
        return {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": self.bins}

    def kd_logits(self, raw: DetectorOutput) -> torch.Tensor:
        return raw["cls"]

    def loss(
        self, raw: DetectorOutput, targets: torch.Tensor, epoch: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "fn" not in self._criterion:
            from fgkd.models.detectors.losses import YOLOv6Loss

            self._criterion["fn"] = YOLOv6Loss(
                self.num_classes, bins=self.bins, iou_type=self.iou_type, **self.loss_kwargs
            )
        return self._criterion["fn"](raw, targets, epoch=epoch)

    def postprocess(
        self, raw: DetectorOutput, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
        multi_label: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        from fgkd.models.detectors.ops import postprocess

        return postprocess(raw, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)

    def fuse(self) -> YOLOv6:
        """Deploy conversion in place (Conv+BN folding, RepVGG → single 3×3 conv); leaves the model in eval
        mode. Eval outputs are unchanged; BottleRep alphas stay. Training a fused model is not supported."""
        self.eval()
        fuse_blocks(self)
        return self

    deploy = fuse


_LOSS_KEYS = ("cls_weight", "iou_weight", "dfl_weight", "topk", "alpha", "beta", "atss_warmup_epochs",
              "min_candidate_size")
_ARCH_KEYS = ("training_mode", "iou_type", "bins", "cspsppf")


def build_yolov6(size: str, num_classes: int, **overrides: Any) -> YOLOv6:
    """Build ``yolov6{size}``; ``overrides`` may set the architecture keys ``training_mode``, ``iou_type``,
    ``bins``, ``cspsppf`` and the loss keys of YOLOv6Loss (weights: ``fgkd.models.registry.build_model``)."""
    check_options(f"yolov6{size}", overrides, _ARCH_KEYS + _LOSS_KEYS)
    spec = SPECS[size]
    model = YOLOv6(
        num_classes,
        depth=spec.depth,
        width=spec.width,
        csp_e=spec.csp_e,
        cspsppf=overrides.get("cspsppf", spec.cspsppf),
        training_mode=overrides.get("training_mode", spec.training_mode),
        bins=overrides.get("bins", spec.bins),
        iou_type=overrides.get("iou_type", spec.iou_type),
        loss_kwargs={k: overrides[k] for k in _LOSS_KEYS if k in overrides},
    )
    return model


def _register(size: str) -> None:
    @register_detector(f"yolov6{size}")
    def factory(num_classes: int, **overrides: Any) -> YOLOv6:
        return build_yolov6(size, num_classes, **overrides)


for _size in SPECS:
    _register(_size)
