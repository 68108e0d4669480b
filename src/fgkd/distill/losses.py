"""Knowledge-distillation losses (FAKD Eq. 7-9 and the baselines of Table 4/5) behind one small registry.

Every loss is called as ``loss(student_feats, teacher_feats) -> scalar`` with two equally long lists of
tensors (one per tap, Eq. 8 sums over them) and returns the *unweighted* sum over taps; the training module
multiplies by ``alpha`` (Eq. 9). Common rules (kd_losses.md §0, §6.4):

* teacher tensors are detached inside; student tensors keep their graph;
* computed with autocast disabled in ``compute_dtype``: by default fp16/bf16 are promoted to fp32 and fp64
  stays fp64 (so ``torch.autograd.gradcheck`` works);
* paired maps must agree in batch and spatial size (ValueError naming the tap index and both shapes) and,
  except for ``mmd`` with ``variant="nst"``, in channels (use :func:`fgkd.distill.connectors.build_connectors`);
* ``loss.per_tap(student, teacher)`` returns the list of per-tap values (for logging);
* flags for the training module: ``enabled`` (False only for ``none``), ``uses_logits`` (True only for
  ``kl``, whose "features" are ``[detector.kd_logits(raw)]`` of student and teacher instead of tapped maps).

Names: ``none cs mse mmd cwd kl`` (``KD_LOSSES``; ``build_kd_loss(name, **params)``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KD_LOSSES",
    "ChannelWiseDivergenceLoss",
    "CosineDistanceLoss",
    "KDLoss",
    "LogitKLLoss",
    "MMDLoss",
    "MSELoss",
    "NoKDLoss",
    "build_kd_loss",
    "register_kd_loss",
]

KD_LOSSES: dict[str, type[KDLoss]] = {}


def register_kd_loss(name: str) -> Callable[[type[KDLoss]], type[KDLoss]]:
    """Class decorator adding a loss to ``KD_LOSSES`` under ``name``."""

    def wrap(cls: type[KDLoss]) -> type[KDLoss]:
        if name in KD_LOSSES:
            raise ValueError(f"KD loss {name!r} registered twice")
        cls.name = name
        KD_LOSSES[name] = cls
        return cls

    return wrap


def build_kd_loss(name: str, **params: Any) -> KDLoss:
    """Build the KD loss ``name`` (one of ``KD_LOSSES``) with its parameters (``conf/kd/<name>.yaml: params``)."""
    if name not in KD_LOSSES:
        raise ValueError(f"unknown KD loss {name!r} (kd.name); choose one of: {', '.join(sorted(KD_LOSSES))}")
    try:
        return KD_LOSSES[name](**params)
    except TypeError as err:
        raise TypeError(f"bad parameters for KD loss {name!r} (kd.params = {params}): {err}") from None


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    parsed = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(parsed, torch.dtype) or not parsed.is_floating_point:
        raise ValueError(
            f"compute_dtype must be a floating dtype such as 'float32' or 'float64', got {dtype!r}"
        )
    return parsed


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


def _shapes(student: torch.Tensor, teacher: torch.Tensor) -> str:
    return f"student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"


def _check_maps(
    index: int, student: torch.Tensor, teacher: torch.Tensor, match_channels: bool = True
) -> None:
    """Paired feature maps ``[N, C, *spatial]``: same batch and spatial size, and same C unless told otherwise."""
    if student.dim() < 2 or student.dim() != teacher.dim():
        raise ValueError(
            f"tap {index}: expected two [N, C, H, W] maps of the same rank, got {_shapes(student, teacher)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"tap {index}: batch size mismatch, {_shapes(student, teacher)}")
    if student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"tap {index}: spatial size mismatch, {_shapes(student, teacher)}; student and teacher taps must "
            "have the same stride and both models must see the same input size"
        )
    if match_channels and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"tap {index}: channel mismatch, {_shapes(student, teacher)}; map the student to the teacher's "
            "channels first with fgkd.distill.connectors.build_connectors(student_channels, teacher_channels)"
        )


class KDLoss(nn.Module):
    """Base class: validates the pair lists, detaches the teacher, casts, sums ``pair_loss`` over taps."""

    name: ClassVar[str] = ""
    enabled: ClassVar[bool] = True
    uses_logits: ClassVar[bool] = False
    #: smallest rank of one tapped tensor this loss accepts
    min_dim: ClassVar[int] = 2

    def __init__(self, compute_dtype: torch.dtype | str | None = None) -> None:
        super().__init__()
        self.compute_dtype = _parse_dtype(compute_dtype)

    def check_pair(self, index: int, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.dim() < self.min_dim:
            raise ValueError(
                f"{self.name}: tap {index} needs at least {self.min_dim} dims, got {_shapes(student, teacher)}"
            )
        _check_maps(index, student, teacher)

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def per_tap(
        self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        if isinstance(student_feats, torch.Tensor) or isinstance(teacher_feats, torch.Tensor):
            raise TypeError(
                f"{self.name}: pass lists of tensors (one per tap), e.g. [feature], not a bare tensor"
            )
        if len(student_feats) != len(teacher_feats):
            raise ValueError(
                f"{self.name}: {len(student_feats)} student taps vs {len(teacher_feats)} teacher taps; "
                "both models must be tapped at the same K layers"
            )
        if not student_feats:
            raise ValueError(f"{self.name}: no feature pairs given (K = 0); check kd.taps / kd.layers")
        losses = []
        for index, (student, teacher) in enumerate(zip(student_feats, teacher_feats, strict=True)):
            self.check_pair(index, student, teacher)
            dtype = self.compute_dtype or torch.promote_types(student.dtype, torch.float32)
            with _autocast_off(student.device):
                losses.append(self.pair_loss(student.to(dtype), teacher.detach().to(dtype)))
        return losses

    def forward(
        self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        return torch.stack(self.per_tap(student_feats, teacher_feats)).sum()


@register_kd_loss("none")
class NoKDLoss(KDLoss):
    """No distillation (``enabled = False``): returns a zero scalar and needs no teacher."""

    enabled: ClassVar[bool] = False

    def forward(
        self,
        student_feats: Sequence[torch.Tensor] | None = None,
        teacher_feats: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        like = student_feats[0] if student_feats else None
        if like is None:
            return torch.zeros(())
        return torch.zeros((), device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


@register_kd_loss("cs")
class CosineDistanceLoss(KDLoss):
    """FAKD Eq. 7-8: ``mean_b [1 - cos(flatten(F_S[b]), flatten(F_T[b]))]``, summed over taps.

    Range [0, 2] per tap: 0 for parallel, 1 for orthogonal, 2 for antiparallel maps. Scale-invariant per
    sample. ``eps`` (1e-8, as ``F.cosine_similarity`` and A-SKD, kd_losses.md §3) bounds each norm from
    below, so an all-zero map gives cos = 0, i.e. distance 1, instead of NaN.
    """

    def __init__(self, eps: float = 1e-8, compute_dtype: torch.dtype | str | None = None) -> None:
        super().__init__(compute_dtype)
        if eps <= 0:
            raise ValueError(f"cs: eps must be > 0, got {eps}")
        self.eps = eps

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        cosine = F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1, eps=self.eps)
        return (1.0 - cosine).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


@register_kd_loss("mse")
class MSELoss(KDLoss):
    """FitNets/HEAD-style hint loss: ``mean_{n,c,h,w} (F_S - F_T)^2`` per tap (kd_losses.md §4), summed over taps."""

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher, reduction="mean")


@register_kd_loss("mmd")
class MMDLoss(KDLoss):
    """Maximum mean discrepancy between the student and teacher feature distributions (kd_losses.md §2).

    ``variant="mk_rbf"`` (default; ref [39], transferlearning ``MMDLoss``): the samples are the B per-image
    flattened maps ``x_b = flatten(F_S[b])``, ``y_b = flatten(F_T[b])``; kernel
    ``k = Σ_q exp(-‖z_i - z_j‖² / β_q)`` with ``β_q = β · kernel_mul^(q - kernel_num // 2)``, q = 0..kernel_num-1
    (β·{1/4, 1/2, 1, 2, 4} for the defaults) and β = the mean off-diagonal pairwise squared distance of
    the 2B samples, detached (or the fixed ``bandwidth``); biased estimator
    ``MMD² = mean K_XX + mean K_YY - 2 mean K_XY``. Scale-invariant through β. With B = 1 the value is the
    constant 2·Σ_q (1 - exp(-1/m_q)), m_q = kernel_mul^(q - kernel_num//2) (≈ 6.186 for the defaults),
    though its gradient (through the detached β) still pulls x_1 towards y_1; use B >= 2 per device to
    match distributions (each DDP rank uses its local batch, no all-gather).

    ``variant="nst"`` (NST, Huang & Wang 2017; mdistiller ``single_stage_nst_loss``): per image the samples
    are the channels, each L2-normalised over H·W, polynomial kernel ``k(a, b) = (aᵀb)²``;
    ``mean K_SS + mean K_TT - 2 mean K_ST`` averaged over the batch. Channel counts may differ.

    ``variant="linear"``: ``‖mean_b x_b - mean_b y_b‖²`` (linear-kernel MMD).
    """

    VARIANTS: ClassVar[tuple[str, ...]] = ("mk_rbf", "nst", "linear")

    def __init__(
        self,
        variant: str = "mk_rbf",
        kernel_mul: float = 2.0,
        kernel_num: int = 5,
        bandwidth: float | None = None,
        compute_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(compute_dtype)
        if variant not in self.VARIANTS:
            raise ValueError(
                f"mmd: unknown variant {variant!r} (kd.params.variant); choose one of {self.VARIANTS}"
            )
        if kernel_mul <= 0 or int(kernel_num) != kernel_num or kernel_num < 1:
            raise ValueError(
                f"mmd: need kernel_mul > 0 and an integer kernel_num >= 1, got {kernel_mul}, {kernel_num}"
            )
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError(f"mmd: bandwidth must be > 0 or null (data-driven), got {bandwidth}")
        self.variant = variant
        self._warned_batch_of_one = False
        self.kernel_mul = float(kernel_mul)
        self.kernel_num = int(kernel_num)
        self.bandwidth = bandwidth

    def check_pair(self, index: int, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if self.variant == "nst" and student.dim() < 3:
            raise ValueError(
                f"mmd (nst): tap {index} needs [N, C, H, W] maps, got {_shapes(student, teacher)}"
            )
        _check_maps(index, student, teacher, match_channels=self.variant != "nst")

    def bandwidths(self, sq_dists: torch.Tensor) -> list[torch.Tensor | float]:
        """The ``kernel_num`` Gaussian bandwidths around β (see the class docstring)."""
        if self.bandwidth is not None:
            center: torch.Tensor | float = self.bandwidth
        else:
            n = sq_dists.shape[0]
            # Diagonal entries are 0, so the full sum is the off-diagonal sum; detached (kd_losses.md §2b).
            # The floor keeps identical samples (all distances 0) finite: every kernel is then 1, MMD 0.
            center = (sq_dists.detach().sum() / (n * n - n)).clamp_min(torch.finfo(sq_dists.dtype).tiny)
        return [center * self.kernel_mul ** (q - self.kernel_num // 2) for q in range(self.kernel_num)]

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.variant == "nst":
            return self._nst(student, teacher)
        x, y = student.flatten(1), teacher.flatten(1)
        if self.variant == "linear":
            return (x.mean(0) - y.mean(0)).pow(2).sum()
        batch = x.shape[0]
        if batch < 2 and self.bandwidth is None:
            if not self._warned_batch_of_one:
                warnings.warn("mmd (mk_rbf): a batch of one image has no distribution to match; its KD term is 0 "
                              "(use batch_size >= 2 per device, or a fixed kd.params.bandwidth)", stacklevel=2)
                self._warned_batch_of_one = True
            return (x.sum() + y.sum()) * 0.0
        # In float64 (2B samples: O(B² D), cheap next to the network) from the differences of the centred
        # samples, and the kernel as k − 1 (expm1): MMD² of close distributions is a tiny difference of kernel
        # means near 1, which fp32 sums of squared distances cannot resolve.
        z = torch.cat([x, y]).double()
        z = z - z.mean(0, keepdim=True).detach()  # distances are translation invariant
        sq_dists = torch.cdist(z[None], z[None], compute_mode="donot_use_mm_for_euclid_dist")[0].pow(2)
        kernel = sum(torch.expm1(-sq_dists / bandwidth) for bandwidth in self.bandwidths(sq_dists))
        k_xx, k_yy, k_xy = kernel[:batch, :batch], kernel[batch:, batch:], kernel[:batch, batch:]
        return (k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean()).to(x.dtype)

    @staticmethod
    def _nst(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = F.normalize(student.flatten(2), dim=2)  # [N, C_s, HW], unit L2 per channel
        t = F.normalize(teacher.flatten(2), dim=2)
        k_ss = torch.bmm(s, s.transpose(1, 2)).pow(2)
        k_tt = torch.bmm(t, t.transpose(1, 2)).pow(2)
        k_st = torch.bmm(s, t.transpose(1, 2)).pow(2)
        return (k_ss.mean((1, 2)) + k_tt.mean((1, 2)) - 2.0 * k_st.mean((1, 2))).mean()

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, kernel_mul={self.kernel_mul}, kernel_num={self.kernel_num}, "
            f"bandwidth={self.bandwidth}"
        )


@register_kd_loss("cwd")
class ChannelWiseDivergenceLoss(KDLoss):
    """Channel-wise distillation (Shu et al. 2021; kd_losses.md §1, mmrazor form), summed over taps:

    ``τ²/(N·C) · Σ_{n,c} KL(softmax_{hw}(F_T[n,c]/τ) ‖ softmax_{hw}(F_S[n,c]/τ))`` with ``log_softmax`` on
    both sides (``F.kl_div(..., log_target=True)``). τ = 1 by default (mmrazor / YOLOv6 detection configs).
    """

    min_dim: ClassVar[int] = 3

    def __init__(self, tau: float = 1.0, compute_dtype: torch.dtype | str | None = None) -> None:
        super().__init__(compute_dtype)
        if tau <= 0:
            raise ValueError(f"cwd: tau must be > 0, got {tau}")
        self.tau = float(tau)

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n, c = student.shape[:2]
        log_p_s = F.log_softmax(student.flatten(2) / self.tau, dim=2)
        log_p_t = F.log_softmax(teacher.flatten(2) / self.tau, dim=2)
        kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
        return kl * self.tau**2 / (n * c)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


@register_kd_loss("kl")
class LogitKLLoss(KDLoss):
    """Logit distillation on the detection head's class scores (Hinton 2015; YOLOv6 [14]; Table 4 "KD-KL").

    Inputs are ``[detector.kd_logits(raw)]`` of student and teacher: ``float[B, A, nc]`` logits (``uses_logits = True``;
    one tensor per list, or several heads' logits). Temperature T (default 1, kd_losses.md §5; Hinton /
    mdistiller use 4, YOLOv6 20) and the usual T² factor. ``mode``:

    * ``"sigmoid"`` (default): the heads are trained with per-class sigmoid BCE/VFL and have no background
      class, so each class score is its own Bernoulli: per anchor
      ``Σ_c KL(Bern(σ(t_c/T)) ‖ Bern(σ(s_c/T)))``. Unlike a softmax over classes it keeps how
      foreground-like an anchor is (all-low scores = background) and is not identically zero for nc = 1;
    * ``"softmax"``: Hinton per anchor, ``KL(softmax_c(t/T) ‖ softmax_c(s/T))``;
    * ``"yolov6"``: YOLOv6's form, a softmax over the *post-sigmoid* scores divided by T.

    Normalisation: mean over the B·A anchors of the per-anchor KL (summed over classes), times T², so the
    value does not grow with batch or image size. YOLOv6 instead sums over all anchors of the batch
    (``reduction='sum'``): its value is ours times B·A (e.g. 16·8400 at 640 px), which its loss weights
    absorb; here ``alpha`` does.
    """

    uses_logits: ClassVar[bool] = True
    min_dim: ClassVar[int] = 2
    MODES: ClassVar[tuple[str, ...]] = ("sigmoid", "softmax", "yolov6")

    def __init__(
        self, temperature: float = 1.0, mode: str = "sigmoid", compute_dtype: torch.dtype | str | None = None
    ) -> None:
        super().__init__(compute_dtype)
        if temperature <= 0:
            raise ValueError(f"kl: temperature must be > 0, got {temperature}")
        if mode not in self.MODES:
            raise ValueError(f"kl: unknown mode {mode!r} (kd.params.mode); choose one of {self.MODES}")
        self.temperature = float(temperature)
        self.mode = mode

    def check_pair(self, index: int, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.dim() < 2 or student.shape != teacher.shape:
            raise ValueError(
                f"kl: logits {index} must have the same shape [B, A, nc] (same classes, same anchors: same "
                f"strides and input size), got {_shapes(student, teacher)}"
            )

    def pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        temp = self.temperature
        s, t = student / temp, teacher / temp
        if self.mode == "sigmoid":
            p_t = torch.sigmoid(t)
            # KL(Bern(p_t) ‖ Bern(p_s)) with log σ(x) = logsigmoid(x), log(1 - σ(x)) = logsigmoid(-x).
            kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1.0 - p_t) * (
                F.logsigmoid(-t) - F.logsigmoid(-s)
            )
        else:
            if self.mode == "yolov6":
                s, t = torch.sigmoid(student) / temp, torch.sigmoid(teacher) / temp
            log_p_s, log_p_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
            kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True)
        anchors = math.prod(kl.shape[:-1])
        return kl.sum() / anchors * temp**2

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, mode={self.mode!r}"
