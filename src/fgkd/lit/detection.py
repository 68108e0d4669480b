"""LightningModule for detection: base training, teacher training on X_M, and FAKD student training.

``loss = task + alpha * sum_k d(F_S^k, F_T^k)`` (FAKD Eq. 9; the KD loss sums over the K taps, Eq. 8).

* ``view`` picks the batch key the student trains on (``original`` -> ``batch["images"]`` = X,
  ``preprocessed`` -> ``batch["teacher_images"]`` = X_M: the teacher stage), ``val_view`` the one it is
  validated on (Table 1 validates teachers on X_M, Table 2 on X).
* The KD term comes from a :class:`fgkd.distill.distiller.Distiller` (student taps, teacher taps,
  connectors, loss); the teacher inside it is a :class:`fgkd.distill.frozen.FrozenTeacher` (eval, no
  gradients, never a registered sub-module). ``kd.teacher_view`` picks what the teacher sees
  (``preprocessed`` -> X_M, FAKD; ``original`` -> X, classical feature KD). This module keeps only detection.
* DDP: a task loss summed over the images (YOLOv8) is multiplied by the world size on each rank so the
  averaged gradient equals the single-process one (as the reference trainers do); ``alpha * KD`` and
  mean-reduced task losses are not (:func:`task_loss_reduction`; tests/test_ddp.py).
* Validation: torchmetrics COCO mAP (``fgkd.metrics.detection``), ``update`` per step and ``compute`` at
  epoch end; logged as ``val/map val/map_50 val/mar_1 val/mar_10 val/mar_100`` and ``val/ap/<class>``.
  With :class:`fgkd.lit.callbacks.YoloEMA` the validated weights are the EMA weights; the records and the
  best epoch by ``map`` are kept in ``self.history`` (``fgkd.lit.history``), which the engine reads.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from fgkd.distill.distiller import Distiller
from fgkd.distill.frozen import FrozenTeacher
from fgkd.distill.losses import build_kd_loss
from fgkd.lit.batchnorm import BatchNormWarmup, recalibrate_batchnorm
from fgkd.lit.guards import NonFiniteLossGuard, check_finite_state
from fgkd.lit.history import ValidationHistory
from fgkd.lit.optim import Recipe, configure_recipe
from fgkd.metrics.detection import build_map_metric, split_targets, summarize
from fgkd.models.detectors.base import Detector
from fgkd.options import VIEW_KEYS, VIEWS


def batch_images(batch: Mapping[str, Any], view: str) -> torch.Tensor:
    """The image tensor of ``view`` from a detection batch, with a clear error when it is missing."""
    if view not in VIEW_KEYS:
        raise ValueError(f"unknown view {view!r}; allowed: {', '.join(VIEWS)}")
    key = VIEW_KEYS[view]
    if key not in batch:
        raise KeyError(
            f"the batch has no {key!r} (needed for view={view!r}): the datamodule builds the preprocessed "
            "view X_M only when it is given a preprocess combo; choose one with e.g. `preprocess=rb_sf`"
        )
    return batch[key]


def task_loss_reduction(detector: nn.Module) -> str:
    """The detector's declared ``loss_reduction``: ``"sum"`` (task loss summed over the images of a batch,
    YOLOv8's ``loss * batch_size``, detectors.md §3.2) or ``"mean"``; anything else is an error."""
    declared = getattr(detector, "loss_reduction", None)
    if declared not in ("sum", "mean"):
        raise ValueError(f"{type(detector).__name__}.loss_reduction must be declared as 'sum' or 'mean', "
                         f"got {declared!r}")
    return str(declared)


class DetectionModule(pl.LightningModule):
    """Student detector (+ optional frozen teacher and KD loss) trained with a YOLO fine-tuning recipe.

    Args:
        student: the detector to train (``fgkd.models.build_detector``).
        detector_spec: ``{"name", "num_classes", "kwargs"}`` to rebuild the student from a checkpoint
            (stored in the hyper-parameters; see ``fgkd.tasks.detect.load_detector``).
        class_names: names for the per-class AP keys ``val/ap/<name>``.
        recipe: a model config's ``recipe`` block (``fgkd.lit.optim.Recipe.from_config``).
        batch_size: per-device batch (learning-rate / weight-decay scaling).
        dataset_size: number of training images (Ultralytics ``optimizer: auto`` rule); default from the loader.
        teacher: frozen teacher detector (KD only); kd: a ``fgkd.distill.losses.KDLoss`` or its name;
        kd_params: parameters when ``kd`` is a name; alpha: KD weight (Eq. 9).
        taps / teacher_taps / layers: ``kd.taps`` / ``kd.teacher_taps`` / ``kd.layers`` (``fgkd.distill.distiller``);
        teacher_view: ``kd.teacher_view``.
        view / val_view: training / validation view of the student (``original`` | ``preprocessed``).
        connectors: add 1×1 conv connectors on the student side where tapped channel counts differ.
        fuse_teacher: fuse the frozen teacher once (``Detector.fuse()``: same outputs, cheaper forward; ``kd.fuse_teacher``).
        conf / iou / max_det / multi_label: ``postprocess`` settings for validation (COCO protocol: 0.001 /
            0.7 / 300, multi-label as the Ultralytics validator that produces the published mAPs).
        history_path: JSON file rewritten (atomically, rank 0) after every validation epoch
            (``fgkd.lit.history.ValidationHistory``); it survives ``ddp_spawn`` and crashes.
        bn_recalibration_batches / bn_recalibration_below_step: before each validation while
            ``global_step < bn_recalibration_below_step``, re-estimate the validated weights' BatchNorm
            statistics from the last ``bn_recalibration_batches`` training batches (``fgkd.lit.batchnorm``;
            0 turns it off). Training BN momenta also warm up (cumulative mean for the first ~33 batches).
    """

    def __init__(
        self,
        student: Detector,
        *,
        detector_spec: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        recipe: Mapping[str, Any] | None = None,
        batch_size: int = 16,
        dataset_size: int | None = None,
        teacher: nn.Module | None = None,
        kd: Any = None,
        kd_params: Mapping[str, Any] | None = None,
        alpha: float = 0.0,
        taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
        layers: int | None = None,
        teacher_view: str = "preprocessed",
        view: str = "original",
        val_view: str | None = None,
        connectors: bool = True,
        fuse_teacher: bool = False,
        conf: float = 0.001,
        iou: float = 0.7,
        max_det: int = 300,
        multi_label: bool = True,
        history_path: str | os.PathLike[str] | None = None,
        bn_recalibration_batches: int = 4,
        bn_recalibration_below_step: int = 2000,
    ) -> None:
        super().__init__()
        val_view = view if val_view is None else val_view
        for key, value in (("view", view), ("val_view", val_view), ("kd.teacher_view", teacher_view)):
            if value not in VIEW_KEYS:
                raise ValueError(f"{key}={value!r} is not a view; allowed: {', '.join(VIEWS)}")
        if not alpha >= 0 or math.isinf(alpha):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        self.save_hyperparameters(ignore=["student", "teacher", "kd", "history_path"])
        self.hparams["kd_name"] = kd if isinstance(kd, str) or kd is None else getattr(kd, "name", type(kd).__name__)

        self.student = student
        self.class_names = list(class_names) if class_names is not None else None
        self.recipe = Recipe.from_config(recipe)
        self.batch_size = int(batch_size)
        self.dataset_size = dataset_size
        self.alpha = float(alpha)
        self.view, self.val_view, self.teacher_view = view, val_view, teacher_view
        # multi-label (every class above conf per anchor), as the Ultralytics validator computes the mAP it
        # publishes; single-label validation gives systematically different (lower recall) numbers
        self.postprocess_kwargs = dict(conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)

        kd_loss = build_kd_loss(kd or "none", **dict(kd_params or {})) if isinstance(kd, str) or kd is None else kd
        self.kd_loss = kd_loss
        self._teacher = FrozenTeacher(teacher, fuse=fuse_teacher) if teacher is not None else None
        if kd_loss.enabled and self._teacher is None:
            raise ValueError(f"kd={self.hparams['kd_name']!r} needs a teacher; pass teacher= (or use kd=none)")
        #: built only when a KD term is computed, so alpha=0 leaves no connector without gradients (DDP)
        self.distiller = (Distiller(student, self._teacher, kd_loss, student_taps=taps, teacher_taps=teacher_taps,
                                    layers=layers, connectors=connectors)
                          if self._teacher is not None and kd_loss.enabled and self.alpha > 0 else None)

        self.val_map = build_map_metric()
        #: per validation epoch (sanity check excluded): {"epoch", "step", **scalars}; best by map
        self.history = ValidationHistory("map", "max", history_path)
        self.nonfinite = NonFiniteLossGuard()
        #: precise BN before validation while the run is young (see on_validation_epoch_start)
        self.bn_recalibration_batches = int(bn_recalibration_batches)
        self.bn_recalibration_below_step = int(bn_recalibration_below_step)
        self._recent_train_images: list[torch.Tensor] = []

    # -- teacher handling -------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher.model if self._teacher is not None else None

    @property
    def distills(self) -> bool:
        """True when a KD term is computed (a teacher, an enabled KD loss and alpha > 0)."""
        return self.distiller is not None

    @property
    def val_history(self) -> list[dict[str, Any]]:
        return self.history.records

    @property
    def best_val(self) -> dict[str, Any] | None:
        return self.history.best

    def _apply(self, fn: Any, recurse: bool = True) -> DetectionModule:
        super()._apply(fn, recurse)
        if self._teacher is not None and self.distiller is None:  # the distiller moves the teacher it holds
            self._teacher.model._apply(fn)
        return self

    def on_train_epoch_start(self) -> None:
        if self._teacher is not None:
            self._teacher.model.eval()

    def on_train_start(self) -> None:
        # Built here, after the strategy's set-up (SyncBatchNorm conversion replaces the BN modules).
        self._bn_warmup = BatchNormWarmup(self)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.bn_recalibration_batches > 0 and self.global_step < self.bn_recalibration_below_step:
            self._recent_train_images.append(batch_images(batch, self.view).detach())
            del self._recent_train_images[: -self.bn_recalibration_batches]
        else:
            self._recent_train_images.clear()

    def on_validation_epoch_start(self) -> None:
        # Early in a run the weights move faster than BN running statistics (momentum 0.03) follow, and the
        # eval-mode network is then badly mis-normalised (activations shrink or blow up over ~60 BN layers:
        # val mAP 0, val/loss in the 1e5). So while global_step < bn_recalibration_below_step, the statistics of
        # the validated weights (the EMA's, swapped in by YoloEMA before this hook) are re-estimated from the
        # last few training batches ("precise BN"). Long runs validate with their own running statistics.
        if self._recent_train_images and self.global_step < self.bn_recalibration_below_step:
            recalibrate_batchnorm(self.student, self._recent_train_images)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Running BN statistics: cumulative mean for the first ~33 batches, then momentum 0.03 (fgkd.lit.batchnorm).
        warmup = getattr(self, "_bn_warmup", None)
        if warmup is None:
            warmup = self._bn_warmup = BatchNormWarmup(self)
        warmup.step()

    # -- steps ----------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> Any:
        return self.student(images)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, logs)`` for one training batch; ``logs`` holds detached scalars keyed ``train/...``."""
        images = batch_images(batch, self.view)
        targets = batch["targets"]
        recording = self.distiller.record(self.student) if self.distiller is not None else contextlib.nullcontext()
        with recording as student_taps:
            raw = self.student(images, targets)
        task, parts = self.student.loss(raw, targets, epoch=self.current_epoch)
        logs: dict[str, torch.Tensor] = {"train/task": task.detach()}
        logs.update({f"train/{name}": value.detach() for name, value in parts.items()})
        # DDP averages gradients over ranks. A task loss summed over the images (YOLOv8's loss * batch_size)
        # must then be multiplied by the world size to give the single-process gradient of the global batch,
        # as the reference trainers do; a batch mean (YOLOv6's loss, every KD loss) is right as it is.
        world_size = self._trainer.world_size if self._trainer is not None else 1
        task_factor = world_size if task_loss_reduction(self.student) == "sum" else 1
        total = task * task_factor if task_factor != 1 else task
        objective = task.detach()
        if self.distiller is not None:
            kd_total, terms = self.distiller(self.student, raw, student_taps, batch_images(batch, self.teacher_view))
            total = total + self.alpha * kd_total
            objective = objective + self.alpha * kd_total.detach()
            logs["train/kd"] = kd_total.detach()
            logs.update({f"train/kd/{name}": term.detach() for name, term in terms.items()})
        # Logged: task + alpha * KD (Eq. 9) without the DDP factor, comparable across world sizes.
        logs["train/loss"] = objective
        return total, logs

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        total, logs = self.compute_loss(batch)
        if self.nonfinite.skip(total, lambda: (self.current_epoch, self.global_step, self._ckpt_dir())):
            return None  # Lightning skips the optimizer step of this batch
        batch_size = batch_images(batch, self.view).shape[0]
        logs["train/alpha"] = torch.tensor(self.alpha)
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("loss", logs["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)
        if self._trainer is not None and self.trainer.optimizers:
            groups = self.trainer.optimizers[0].param_groups
            self.log("train/lr", groups[min(1, len(groups) - 1)]["lr"], on_step=True, on_epoch=False, batch_size=batch_size)
        # Lightning divides the returned loss by accumulate_grad_batches (a mean over the micro-batches); both
        # reference trainers SUM the gradients of the batches accumulated up to the nominal batch 64, and their
        # lr0 and weight-decay scaling are tuned for that sum, so the division is undone here.
        accumulate = int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1
        return total * accumulate

    def _ckpt_dir(self) -> str:
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        return str(callback.dirpath) if callback is not None and callback.dirpath else ""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_finite_state(checkpoint["state_dict"], f"checkpoint at epoch {self.current_epoch}")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        images = batch_images(batch, self.val_view)
        raw = self.student(images)
        task, _ = self.student.loss(raw, batch["targets"], epoch=self.current_epoch)
        if self._trainer is not None:
            self.log("val/loss", task, on_step=False, on_epoch=True, sync_dist=True, batch_size=images.shape[0])
        preds = self.student.postprocess(raw, **self.postprocess_kwargs)
        preds = [{k: v.detach() for k, v in p.items()} for p in preds]
        self.val_map.update(preds, split_targets(batch["targets"].detach(), images.shape[0]))

    def on_validation_epoch_end(self) -> None:
        # compute() gathers every rank's predictions, so the values are identical on all ranks (no sync_dist).
        scalars = summarize(self.val_map.compute(), self.class_names)
        self.val_map.reset()
        if self._trainer is not None:
            self.log_dict({f"val/{name}": value for name, value in scalars.items()}, prog_bar=False)
            self.log("map", scalars["map"], prog_bar=True, logger=False)
            if self.trainer.sanity_checking:
                return
        self.history.record(self.current_epoch, self.global_step, scalars,
                            write=self._trainer is None or self.trainer.is_global_zero)

    def media(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Dashboard pictures of a validation sample (fgkd.lit.media.detection_media)."""
        from fgkd.lit.media import detection_media

        return detection_media(self, sample)

    # -- optimization ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 - sets up the train loader, so the counts below are known
        batches_per_epoch = int(trainer.num_training_batches)
        if not math.isfinite(batches_per_epoch) or batches_per_epoch < 1:
            raise ValueError("the training loader must have a finite, non-zero length")
        dataset_size = self.dataset_size or batches_per_epoch * self.batch_size * trainer.world_size
        optimizer, scheduler, resolved = configure_recipe(
            [self],
            self.recipe,
            num_classes=int(self.student.num_classes),
            batch_size=self.batch_size,
            accumulate=int(trainer.accumulate_grad_batches),
            epochs=int(trainer.max_epochs or 1),
            batches_per_epoch=batches_per_epoch,
            dataset_size=dataset_size,
            world_size=trainer.world_size,
            backbone=[self.student.backbone] if isinstance(getattr(self.student, "backbone", None), nn.Module) else [],
        )
        self.resolved_optimizer = resolved
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # the recipe's clip (RT-DETR: max norm 0.1) unless the trainer sets its own gradient_clip_val
        if gradient_clip_val is None and self.recipe.clip_grad_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = float(self.recipe.clip_grad_norm), "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
