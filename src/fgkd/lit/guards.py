"""Guards against silently training on, saving or exporting non-finite numbers (every task's module uses them).

* :class:`NonFiniteLossGuard` — a non-finite training loss stops the fit with :class:`NonFiniteError` (the
  message names the epoch, the step and the last checkpoint, which stays as it was: the check runs before
  backward, so no non-finite gradient ever reaches the weights). ``max_skips`` > 0 (the top-level
  ``max_nonfinite_skips`` of conf/train.yaml) skips up to that many such batches, counted and printed,
  before failing; skipping is per rank, so keep it 0 under DDP (a rank that skips while the others step
  would stall the gradient all-reduce).
* :func:`check_finite_state` — refuses to write a checkpoint or an exported model with non-finite tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or weights; the message says where and what was kept."""


class NonFiniteLossGuard:
    def __init__(self, max_skips: int = 0) -> None:
        if max_skips < 0:
            raise ValueError(f"max_skips must be >= 0, got {max_skips}")
        self.max_skips, self.skipped = int(max_skips), 0

    def skip(self, loss: torch.Tensor, where: Callable[[], tuple[int, int, str]]) -> bool:
        """False for a finite loss; True when this non-finite batch is to be skipped; raises past ``max_skips``.
        ``where()`` -> ``(epoch, step, checkpoint folder)``, asked only for a non-finite loss."""
        if bool(torch.isfinite(loss.detach()).all()):
            return False
        epoch, step, folder = where()
        self.skipped += 1
        if self.skipped <= self.max_skips:
            print(f"warning: non-finite training loss ({loss.detach().float().item()}) at epoch {epoch}, step {step}: "
                  f"batch skipped ({self.skipped}/{self.max_skips})", flush=True)
            return True
        kept = f" Checkpoints written so far are unchanged{' (' + folder + ')' if folder else ''}."
        raise NonFiniteError(
            f"non-finite training loss ({loss.detach().float().item()}) at epoch {epoch}, step {step}: training "
            f"stopped.{kept} Lower the learning rate (model.recipe.optimizer.lr), check the data, or resume from "
            "the last checkpoint (ckpt_path=auto)."
        )


def check_finite_state(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NonFiniteError` when a floating tensor of ``state`` holds NaN or inf."""
    bad = [name for name, value in state.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise NonFiniteError(f"{what}: {len(bad)} of {len(state)} tensors are not finite (e.g. {bad[:3]}); "
                             "refusing to write it (the earlier file, if any, is kept)")
