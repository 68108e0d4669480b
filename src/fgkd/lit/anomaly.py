"""LightningModule of the anomaly task: every reverse-distillation variant (``rd``, ``rd2t``, ``bsdrd``).

* training: the frozen encoder(s) see a defect-free batch, the student(s) rebuild their maps; the loss is the
  model's (``model.loss``), and what ``model.loss_parts`` returns is logged beside it (RD: both cosine forms,
  ``train/loss_flat`` and ``train/loss_pixel``, as anomaly_spec.md §4.2.5 asks; BSDRD: each student's terms,
  MD-GFLoss and its gates);
* validation = the labelled test split: blurred anomaly maps, image score = max; image AUROC (labels from
  the folders), pixel AUROC, exact AU-PRO up to ``fpr_limit`` (``fgkd.metrics.anomaly``), RD4AD's per-image
  PRO as ``pro_rd4ad`` for comparison with papers (optional, it is slow), and the same metrics for the
  trivial baseline (per-pixel L2 distance to the mean training image, blurred alike) under ``baseline_*``;
* DDP: each rank validates its shard; the maps are gathered by sample index (duplicates of the padded
  sampler removed) so every rank computes the metrics on the whole test set (tests/test_anomaly_ddp.py);
* the reported epoch is the last (``ValidationHistory(mode="last")``): no epoch is chosen on the test set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from fgkd.lit.guards import NonFiniteLossGuard, check_finite_state
from fgkd.lit.history import ValidationHistory
from fgkd.metrics.anomaly import anomaly_metrics, aupro_rd4ad
from fgkd.models.anomaly.components.anomaly_map import gaussian_blur, image_scores

SCHEDULERS = ("none", "cosine", "cosine_restarts")


def baseline_maps(images: torch.Tensor, mean_image: torch.Tensor, sigma: float) -> torch.Tensor:
    """The trivial baseline: ``‖x − mean training image‖₂`` per pixel (normalised RGB), blurred like the model's map."""
    return gaussian_blur(torch.linalg.vector_norm(images - mean_image.to(images), dim=1), sigma)


class AnomalyModule(pl.LightningModule):
    """Args:
        model: an anomaly model (``forward → (teacher, student outputs)``, ``loss``, ``loss_parts``, ``predict``,
            ``sigma``): ``ReverseDistillation`` or ``BSDRD``.
        optimizer: ``{name: adam|adamw, lr, betas, weight_decay}``; scheduler: ``{name: none|cosine|cosine_restarts,
            t_max (epochs), eta_min}`` (paper 001: "cosine annealing … period 32").
        mean_image: ``[3, S, S]`` mean normalised training image (None: no baseline).
        fpr_limit: AU-PRO integration limit; pro_rd4ad: also compute RD4AD's per-image PRO.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Mapping[str, Any] | None = None,
                 scheduler: Mapping[str, Any] | None = None, *, mean_image: torch.Tensor | None = None,
                 fpr_limit: float = 0.3, pro_rd4ad: bool = False,
                 history_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.optimizer_cfg = {"name": "adam", "lr": 0.005, "betas": (0.5, 0.999), "weight_decay": 0.0,
                              **dict(optimizer or {})}
        self.scheduler_cfg = {"name": "none", "t_max": 32, "eta_min": 0.0, **dict(scheduler or {})}
        if self.scheduler_cfg["name"] not in SCHEDULERS:
            raise ValueError(f"model.recipe.scheduler.name={self.scheduler_cfg['name']!r}: choose one of {SCHEDULERS}")
        self.register_buffer("mean_image", mean_image if mean_image is not None else torch.zeros(0), persistent=True)
        self.fpr_limit, self.pro_rd4ad = float(fpr_limit), bool(pro_rd4ad)
        self.history = ValidationHistory("image_auroc", "last", history_path)
        self.nonfinite = NonFiniteLossGuard()
        self._outputs: list[dict[str, torch.Tensor]] = []

    @property
    def has_baseline(self) -> bool:
        return self.mean_image.numel() > 0

    # -- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        images = batch["images"]
        teacher, student = self.model(images)
        loss = self.model.loss(teacher, student)
        if self.nonfinite.skip(loss, lambda: (self.current_epoch, self.global_step, "")):
            return None
        parts = {f"train/{k}": v for k, v in self.model.loss_parts(teacher, student).items()}
        n = images.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict(parts, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    # -- validation -----------------------------------------------------------------------------------------
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        images = batch["images"]
        maps, _ = self.model.predict(images)
        out = {"index": batch["index"].cpu(), "maps": maps.float().cpu(), "masks": batch["masks"].cpu(),
               "labels": batch["labels"].cpu()}
        if self.has_baseline:
            out["baseline"] = baseline_maps(images, self.mean_image, self.model.sigma).cpu()
        self._outputs.append(out)

    def _gathered(self) -> dict[str, torch.Tensor]:
        local = {k: torch.cat([o[k] for o in self._outputs]) for k in self._outputs[0]} if self._outputs else {}
        self._outputs = []
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shards: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(shards, local)
            shards = [s for s in shards if s]
            local = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        if not local:
            return local
        order = torch.argsort(local["index"], stable=True)
        index = local["index"][order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]  # the distributed sampler pads with repeats
        return {k: v[order][keep] for k, v in local.items()}

    def evaluate(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, float]:
        masks, labels = outputs["masks"].bool(), outputs["labels"]
        scalars = anomaly_metrics(outputs["maps"], masks, labels, self.fpr_limit)
        if self.pro_rd4ad:
            scalars["pro_rd4ad"] = aupro_rd4ad(outputs["maps"], masks, self.fpr_limit)
        if "baseline" in outputs:
            baseline = anomaly_metrics(outputs["baseline"], masks, labels, self.fpr_limit)
            scalars.update({f"baseline_{k}": v for k, v in baseline.items()})
        scores = image_scores(outputs["maps"])
        scalars["score_normal_mean"] = float(scores[labels == 0].mean()) if bool((labels == 0).any()) else math.nan
        scalars["score_defect_mean"] = float(scores[labels == 1].mean()) if bool((labels == 1).any()) else math.nan
        return scalars

    def on_validation_epoch_end(self) -> None:
        outputs = self._gathered()
        if not outputs:
            return
        self.last_outputs = outputs  # the pictures (fgkd.tasks.anomaly) use the final epoch's maps
        scalars = self.evaluate(outputs)
        if self._trainer is not None:
            self.log_dict({f"val/{k}": v for k, v in scalars.items()}, prog_bar=False)
            self.log("i_auroc", scalars["image_auroc"], prog_bar=True, logger=False)
            if self.trainer.sanity_checking:
                return
        self.history.record(self.current_epoch, self.global_step, scalars,
                            write=self._trainer is None or self.trainer.is_global_zero)

    def media(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Dashboard pictures of a validation sample (fgkd.lit.media.anomaly_media)."""
        from fgkd.lit.media import anomaly_media

        return anomaly_media(self, sample)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_finite_state(checkpoint["state_dict"], f"checkpoint at epoch {self.current_epoch}")

    # -- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.optimizer_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        name = str(cfg["name"]).lower()
        if name not in ("adam", "adamw"):
            raise ValueError(f"model.recipe.optimizer.name={name!r}: the RD recipes use adam or adamw")
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        optimizer = cls(params, lr=float(cfg["lr"]), betas=tuple(float(b) for b in cfg["betas"]),
                        weight_decay=float(cfg["weight_decay"]))
        sched = self.scheduler_cfg
        if sched["name"] == "none":
            return optimizer
        if sched["name"] == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(sched["t_max"]),
                                                                   eta_min=float(sched["eta_min"]))
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=int(sched["t_max"]),
                                                                             eta_min=float(sched["eta_min"]))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


__all__ = ["AnomalyModule", "baseline_maps"]
