"""BatchNorm running-statistics warm-up: a cumulative average until the reference momentum takes over.

Both reference frameworks use BatchNorm momentum 0.03 (``common.BN_MOMENTUM``). From random init the
running variance starts at 1 while the real variances of a fresh YOLO are ~0.01, and the start value keeps
a weight of ``0.97^n`` after ``n`` batches: still ~1 % (as large as the signal) after 150 batches, which is a
whole default dev run (96 SynthPipes images, batch 8, 15 epochs). The eval-mode network then shrinks every
activation, the shrinkage compounds over ~60 BN layers and the validated model outputs little more than its
biases: mAP 0 however well the training-mode model fits (the bug this module fixes; tests/test_learning.py).

:class:`BatchNormWarmup` sets each BatchNorm's momentum to ``max(momentum, 1 / (n + 1))`` before a training
batch, ``n`` = batches already tracked: the running statistics are then the plain mean of every batch seen
so far (no weight left on the init) until ``1 / (n + 1)`` falls below the reference momentum, i.e. after
~33 batches; from then on it is exactly the reference EMA. Long runs (the paper's scale) are unaffected
beyond their first few dozen batches.

Even unbiased running statistics lag the weights while they still move fast (AdamW's first few hundred
steps): a mean over the last ~33 batches, computed with older weights, then under-estimates the variances
and eval-mode activations blow up over depth (val/loss ~1e5 after the first epoch). :func:`recalibrate_batchnorm`
("precise BN") re-estimates them for the current weights from a few recent training batches;
``DetectionModule`` does so before each validation early in a run.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class BatchNormWarmup:
    """Per-batch momentum schedule for every BatchNorm of ``module`` (call :meth:`step` before each training batch)."""

    def __init__(self, module: nn.Module) -> None:
        self.norms: list[tuple[_BatchNorm, float]] = [
            (m, float(m.momentum))
            for m in module.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.momentum is not None
        ]
        self.done = not self.norms

    def step(self) -> None:
        """Set the momenta for the next training batch (one host sync per batch, only during the warm-up)."""
        if self.done:
            return
        # The largest count (one host sync): a BN that some batches skip must not hold the others at momentum 1.
        tracked = int(torch.stack([norm.num_batches_tracked for norm, _ in self.norms]).max())
        finished = True
        for norm, base in self.norms:
            momentum = max(base, 1.0 / (tracked + 1))
            finished &= momentum == base
            norm.momentum = momentum
        self.done = finished


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: list[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics of ``module`` from ``batches`` (images, no grad).

    Each BN gets the plain mean of its per-batch statistics over ``batches`` (momentum None), computed with
    the weights ``module`` has now; modes and momenta are restored afterwards. Returns the number of BNs.
    """
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms or not batches:
        return 0
    saved = [(norm, norm.momentum, norm.training, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for images in batches:
        module(images)
    for norm, momentum, training, tracked in saved:
        norm.momentum = momentum
        norm.train(training)
        norm.num_batches_tracked.copy_(tracked)  # the training schedule's count, not the recalibration's
    return len(norms)
