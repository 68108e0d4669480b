"""DDP semantics of the KD training step: 2 CPU processes (gloo) vs one process on the same global batch.

The DDP run is the real thing: ``conf/trainer/ddp_cpu.yaml`` (Lightning ``strategy=ddp_spawn``, accelerator
cpu, devices 2, ``sync_batchnorm: false``) instantiated through Hydra and ``trainer.fit`` on a
:class:`fgkd.lit.detection.DetectionModule` (tiny real student at 64 px, nc=3, frozen teacher of the same
architecture, ``kd=cs``, ``alpha=0.5``) whose only change is a plain SGD optimizer (lr 0.05, no momentum, no
weight decay, no clipping, 32-bit) so that one step's update is ``-lr * gradient`` and nothing of the recipe
blurs the DDP semantics. A callback saves each rank's loss and student/teacher weights after every step.

Policy under test (ecosystem.md §3.2-3.3):

* **BatchNorm: per-rank statistics.** SyncBatchNorm needs GPU tensors, so on CPU/gloo each rank normalises
  with its own half of the batch (``trainer=ddp`` on GPUs turns SyncBN on instead).
* **Gradients: DDP averages over ranks.** A loss that is a *mean* over the images (YOLOv6's loss, every KD
  loss) therefore gives the single-process gradient as is; a loss that is a *sum* over the images (YOLOv8's
  ``loss * batch_size``, detectors.md §3.2) must be multiplied by the world size on each rank to give it
  (Ultralytics' and YOLOv6's trainers multiply their DDP loss by ``world_size`` for the same reason). Only
  the task term gets the factor: ``alpha * KD`` is a batch mean.

Step 1 — the two ranks get *identical* halves A, A. Per-rank BN statistics then equal the global ones and
every per-rank normaliser is half the global one, so DDP must equal one process on the global batch [A; A]
exactly (up to float summation order): same student weights after the step, and each rank's backpropagated
loss equals the global-batch loss.

Step 2 — *different* halves B, C (from the weights after step 1). DDP is defined to average the per-rank
gradients, each computed with that rank's own BN statistics and loss normalisers: the weights must equal
``theta - lr * mean(g_B, g_C)`` with ``g_h`` from a single-process ``compute_loss`` on half h (plus the
world-size factor on the task term for sum-reduced losses), and each rank's loss equals its half's loss.
(This is *not* the global-batch step [B; C]: BN statistics and loss normalisers are per rank.)

Both steps: the teacher's weights and BN buffers are bit-identical to their initial values on both ranks and
the teacher stays in eval mode.

Tolerances (float32): updates agree to ``‖Δθ_ddp − Δθ_ref‖ ≤ 1e-4 ‖Δθ_ref‖`` (measured ~1e-7-1e-6: only
the order of float additions differs), weights to ``atol = 1e-5 + 1e-4·max|Δθ_ref|`` per tensor (one stem-conv element measured 1.1e-5 on a 2-core
CPU, the rest <= 8e-7); losses to
``rtol = 1e-5``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fgkd.lit.detection import DetectionModule

pytestmark = pytest.mark.ddp

NC = 3
IMGSZ = 64
HALF = 2  # images per rank
WORLD = 2
LR = 0.05
ALPHA = 0.5
UPDATE_RTOL = 1e-4
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5
#: how the detector's task loss reduces over the batch: "sum" needs the world-size factor under DDP
LOSS_REDUCTION = {"yolov6n": "mean", "yolov8n": "sum"}


# -- data -------------------------------------------------------------------------------------------------
def make_half(seed: int) -> dict:
    """A per-rank batch in the contract format (CONTRACT.md "Batch"): 3 boxes of 24-56 px per image.

    Large, numerous boxes keep each rank's loss normaliser (the sum of assigned target scores) above the
    clamp at 1 both losses apply; below it a per-rank normaliser is not half the global one and step 1's
    exact equality would not hold (the first assertion of the test checks this precondition).
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(HALF, 3, IMGSZ, IMGSZ, generator=g)
    rows = []
    for b in range(HALF):
        for _ in range(3):
            w, h = (torch.rand(2, generator=g) * 32 + 24).tolist()
            x1, y1 = float(torch.rand(1, generator=g)) * (IMGSZ - w), float(torch.rand(1, generator=g)) * (IMGSZ - h)
            rows.append([b, int(torch.randint(NC, (1,), generator=g)), x1, y1, x1 + w, y1 + h])
    masks = torch.rand(HALF, 1, IMGSZ, IMGSZ, generator=g) > 0.5
    return {
        "images": images,
        "masks": masks,
        "teacher_images": images * masks,  # any X_M-like view different from X
        "targets": torch.tensor(rows, dtype=torch.float32),
        "paths": [f"s{seed}_{b}.jpg" for b in range(HALF)],
    }


def concat(first: dict, second: dict) -> dict:
    """The global batch [first; second] (target batch indices of ``second`` shifted)."""
    shifted = second["targets"].clone()
    shifted[:, 0] += first["images"].shape[0]
    out = {key: torch.cat([first[key], second[key]]) for key in ("images", "masks", "teacher_images")}
    out["targets"] = torch.cat([first["targets"], shifted])
    out["paths"] = first["paths"] + second["paths"]
    return out


class RankBatches(Dataset):
    """Item i = (rank 0's batch, rank 1's batch) of step i; each rank picks its own (``batch_size=None``)."""

    def __init__(self, steps: list[tuple[dict, dict]]) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> dict:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return self.steps[index][rank]


# -- module and recorder (module level: ddp_spawn pickles them by name into the child processes) ----------
class SGDDetectionModule(DetectionModule):
    """DetectionModule with plain SGD (lr LR, no momentum, no weight decay): isolates DDP from the recipe."""

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=LR, momentum=0.0)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Recorder(pl.Callback):
    """Saves ``rank{r}_step{i}.pt`` = {loss, student, teacher, teacher_training} after every training batch."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.save(
            {
                "loss": outputs["loss"].detach().clone(),
                "student": _state(pl_module.student),
                "teacher": _state(pl_module.teacher),
                "teacher_training": any(m.training for m in pl_module.teacher.modules()),
                "images": batch["images"].clone(),
            },
            Path(self.out_dir) / f"rank{trainer.global_rank}_step{batch_idx}.pt",
        )



# -- helpers ----------------------------------------------------------------------------------------------
def build_module(model: str, seed: int = 0):
    from fgkd.models import build_detector

    torch.manual_seed(seed)
    student = build_detector(model, NC)
    teacher = build_detector(model, NC)
    for detector in (student, teacher):
        # YOLOv6 zero-initialises its prediction convs (reference init), which zeroes every gradient behind
        # them on step 1; small random weights make all parameters move, so the comparison covers them all.
        for name, param in detector.named_parameters():
            if ".cls_preds." in name or ".reg_preds." in name:
                if name.endswith("weight"):
                    nn.init.normal_(param, std=0.01)
    return SGDDetectionModule(student, teacher=teacher, kd="cs", alpha=ALPHA, batch_size=HALF)


def load_student(module, state: dict[str, torch.Tensor]):
    module.student.load_state_dict(state)
    return module


def grads_of(module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in module.student.named_parameters()}


def task_only_grads(module, half: dict) -> dict[str, torch.Tensor]:
    """Gradient of the detector's own task loss on ``half`` (Detector API; train-mode BN, like compute_loss)."""
    raw = module.student(half["images"])
    task, _ = module.student.loss(raw, half["targets"])
    return grads_of(module, task)


def sgd_step(state: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v - LR * grads[k]) if k in grads else v for k, v in state.items()}


def assert_update_close(before: dict, ddp: dict, expected: dict, where: str) -> None:
    names = [k for k in expected if before[k].is_floating_point() and "running" not in k]
    ddp_delta = torch.cat([(ddp[k] - before[k]).flatten() for k in names])
    ref_delta = torch.cat([(expected[k] - before[k]).flatten() for k in names])
    assert ref_delta.norm() > 0, f"{where}: the reference update is zero; the test would prove nothing"
    relative = ((ddp_delta - ref_delta).norm() / ref_delta.norm()).item()
    assert relative <= UPDATE_RTOL, f"{where}: DDP update differs from the reference by {relative:.3g} (relative)"
    for k in names:
        # per element: WEIGHT_ATOL plus UPDATE_RTOL of the tensor's largest reference update (float32 summation
        # order over a large fan-in, e.g. the stem conv's 4 x 32 x 32 positions, moves single elements ~1e-5)
        atol = WEIGHT_ATOL + UPDATE_RTOL * float((expected[k] - before[k]).abs().max())
        torch.testing.assert_close(ddp[k], expected[k], rtol=0.0, atol=atol, msg=lambda m, k=k: f"{where} {k}: {m}")


def ddp_cpu_trainer(compose_train, tmp_path: Path, recorder: Recorder):
    """``trainer=ddp_cpu`` from the Hydra config, with the recipe-specific knobs neutralised."""
    from hydra.utils import instantiate

    cfg = compose_train("trainer=ddp_cpu", "logger=none", "callbacks=none")
    assert cfg.trainer.strategy == "ddp_spawn" and cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.devices == WORLD and cfg.trainer.sync_batchnorm is False
    return instantiate(
        cfg.trainer,
        default_root_dir=str(tmp_path),
        max_epochs=1,
        precision="32-true",
        accumulate_grad_batches=1,
        gradient_clip_val=None,
        limit_train_batches=None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # RankBatches hands each rank its own half
    )


# -- the test ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["yolov6n", "yolov8n"])  # a mean-reduced and a sum-reduced task loss
def test_ddp_kd_step_matches_single_process(model: str, compose_train, tmp_path: Path) -> None:
    half_a, half_b, half_c = make_half(1), make_half(2), make_half(3)
    module = build_module(model)
    theta0, teacher0 = _state(module.student), _state(module.teacher)

    # Invariant the world-size policy rests on: a "sum" loss doubles on [A; A], a "mean" loss does not
    # (exactly so only while the normaliser is unclamped: also the precondition of step 1).
    with torch.no_grad():
        probe = build_module(model).student
        single = probe.loss(probe(half_a["images"]), half_a["targets"])[0]
        doubled = concat(half_a, half_a)
        twice = probe.loss(probe(doubled["images"]), doubled["targets"])[0]
    task_factor = WORLD if LOSS_REDUCTION[model] == "sum" else 1  # the DDP factor on the task term
    torch.testing.assert_close(twice / single, torch.tensor(float(task_factor)), rtol=1e-4, atol=0)

    out_dir = tmp_path / "records"
    out_dir.mkdir()
    loader = DataLoader(RankBatches([(half_a, half_a), (half_b, half_c)]), batch_size=None, num_workers=0)
    trainer = ddp_cpu_trainer(compose_train, tmp_path, Recorder(str(out_dir)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*in eval mode at the start of training.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        trainer.fit(module, train_dataloaders=loader)
    records = {(r, s): torch.load(out_dir / f"rank{r}_step{s}.pt", weights_only=False) for r in range(WORLD) for s in (0, 1)}
    assert torch.equal(records[(0, 1)]["images"], half_b["images"]) and torch.equal(records[(1, 1)]["images"], half_c["images"])

    # -- step 1: identical halves -> DDP == one process on the global batch --------------------------------
    single_process = load_student(build_module(model), theta0)
    global_loss, _ = single_process.compute_loss(concat(half_a, half_a))
    expected1 = sgd_step(theta0, grads_of(single_process, global_loss))
    for rank in range(WORLD):
        rec = records[(rank, 0)]
        torch.testing.assert_close(rec["loss"], global_loss.detach(), rtol=LOSS_RTOL, atol=0)
        assert_update_close(theta0, rec["student"], expected1, f"step 1, rank {rank}")

    # -- step 2: different halves -> DDP == mean of the per-rank gradients (per-rank BN statistics) ----------
    theta1 = records[(0, 0)]["student"]
    rank_grads, rank_losses = [], []
    for half in (half_b, half_c):
        per_rank = load_student(build_module(model), theta1)
        total, logs = per_rank.compute_loss(half)
        grads = grads_of(per_rank, total)
        if task_factor != 1:  # the rank's loss is task_factor * task + alpha * KD
            task_grads = task_only_grads(per_rank, half)
            grads = {k: g + (task_factor - 1) * task_grads[k] for k, g in grads.items()}
            total = total + (task_factor - 1) * logs["train/task"]
        rank_grads.append(grads)
        rank_losses.append(total.detach())
    assert all(torch.isfinite(g).all() for grads in rank_grads for g in grads.values())
    difference = sum((rank_grads[0][k] - rank_grads[1][k]).norm() ** 2 for k in rank_grads[0]) ** 0.5
    assert difference > 1e-3, "the two halves give the same gradient: step 2 would not test the averaging"
    mean_grads = {k: (rank_grads[0][k] + rank_grads[1][k]) / WORLD for k in rank_grads[0]}
    expected2 = sgd_step(theta1, mean_grads)
    for rank in range(WORLD):
        rec = records[(rank, 1)]
        torch.testing.assert_close(rec["loss"], rank_losses[rank], rtol=LOSS_RTOL, atol=0)
        assert_update_close(theta1, rec["student"], expected2, f"step 2, rank {rank}")

    # -- the frozen teacher never moves, on either rank ------------------------------------------------------
    for (rank, step), rec in records.items():
        assert not rec["teacher_training"], f"teacher in train mode on rank {rank}, step {step}"
        changed = [k for k in teacher0 if not torch.equal(teacher0[k], rec["teacher"][k])]
        assert not changed, f"teacher tensors changed on rank {rank} after step {step}: {changed[:5]}"
