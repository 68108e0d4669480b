"""Pictures for the dashboards: every ``logger.media_every`` validation epochs (and after the last), a fixed
sample of validation images goes to W&B (``logger=wandb``, boxes as W&B box overlays) and TensorBoard
(``logger=tensorboard``, boxes drawn in), all media of one epoch in one call so they share a step.

What is shown is the task's LightningModule's ``media(sample)``: detection — predictions vs ground truth, the
teacher's view X_M beside X, per KD tap the teacher–student cosine similarity (what FAKD distils, where);
anomaly — image | ground truth | heat-map overlays and the score histogram of the split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch

from fgkd.visualize import heat_overlay, side_by_side, to_uint8

log = logging.getLogger(__name__)

#: logger classes that take images
MEDIA_LOGGERS = ("WandbLogger", "TensorBoardLogger")


@dataclass
class MediaImage:
    """One picture: ``image`` (RGB uint8 HWC, boxes drawn in) for every logger; W&B gets ``raw`` with ``boxes``
    (its box groups, pixel coordinates of ``raw``) instead when they are given, so boxes can be toggled there."""

    image: np.ndarray
    caption: str = ""
    raw: np.ndarray | None = None
    boxes: dict[str, Any] | None = None


def wandb_boxes(boxes: np.ndarray, labels: np.ndarray, names: Sequence[str], scores: np.ndarray | None = None
                ) -> dict[str, Any]:
    """One W&B box group (``{"box_data": [...], "class_labels": {...}}``) in pixel coordinates."""
    data = []
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
        name = names[int(label)] if int(label) < len(names) else str(int(label))
        entry: dict[str, Any] = {"position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
                                 "domain": "pixel", "class_id": int(label), "box_caption": name}
        if scores is not None:
            entry["scores"] = {"score": float(scores[i])}
            entry["box_caption"] = f"{name} {float(scores[i]):.2f}"
        data.append(entry)
    return {"box_data": data, "class_labels": {i: n for i, n in enumerate(names)}}


def log_media(loggers: Sequence[Any], media: Mapping[str, list[MediaImage]], step: int) -> None:
    """Send ``media`` ({key: pictures}) to every logger that takes images, one W&B ``log`` call for all of them."""
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            import wandb

            payload: dict[str, Any] = {
                key: [wandb.Image(m.raw if m.boxes else m.image, caption=m.caption, boxes=m.boxes) for m in items]
                for key, items in media.items() if items}
            logger.experiment.log({**payload, "trainer/global_step": step})
        elif kind == "TensorBoardLogger":
            for key, items in media.items():
                for i, m in enumerate(items):
                    logger.experiment.add_image(f"{key}/{i}", m.image, step, dataformats="HWC")


class ValidationMedia(pl.Callback):
    """Keeps the first ``num_images`` validation images of the epoch and, every ``every`` epochs and after the
    last, logs the module's ``media(sample)`` (module docstring). A picture never fails a run: errors are warnings."""

    def __init__(self, every: int = 5, num_images: int = 4) -> None:
        if int(every) < 1 or int(num_images) < 1:
            raise ValueError(f"logger.media_every={every} / logger.media_images={num_images}: both must be >= 1")
        self.every, self.num_images = int(every), int(num_images)
        self._sample: dict[str, Any] | None = None

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return (epoch + 1) % self.every == 0 or last or epoch == 0

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and self._due(trainer):
            self._sample = take_sample(batch, self.num_images)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sample, self._sample = self._sample, None
        if sample is None or not self._due(trainer) or not hasattr(pl_module, "media"):
            return
        loggers = [lg for lg in trainer.loggers if type(lg).__name__ in MEDIA_LOGGERS]
        if not loggers:
            return
        try:
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                media = pl_module.media(sample)
            pl_module.train(was_training)
            log_media(loggers, media, trainer.global_step)
        except Exception as err:  # noqa: BLE001 - a dashboard picture must never fail a run
            log.warning("could not log the validation media: %s", err)


def take_sample(batch: Mapping[str, Any], count: int) -> dict[str, Any]:
    """The first ``count`` images of a batch (tensors on the CPU); detection targets ``[M, 6]`` rows of those images."""
    sample: dict[str, Any] = {}
    n = None
    for key, value in batch.items():
        if key == "targets" and torch.is_tensor(value):
            sample[key] = value[value[:, 0] < count].detach().cpu()
        elif torch.is_tensor(value) and value.ndim >= 1:
            sample[key] = value[:count].detach().cpu()
            n = sample[key].shape[0] if n is None else n
        else:
            sample[key] = value
    sample["count"] = n or 0
    return sample


# -- what each task shows -----------------------------------------------------------------------------------
def detection_media(module: Any, sample: Mapping[str, Any], conf: float = 0.25) -> dict[str, list[MediaImage]]:
    """``val/predictions`` (student on its validation view: predictions vs ground truth), ``val/teacher_view``
    (X | X_M) and, for feature KD, ``val/kd_cosine/<tap>`` (per-pixel cosine similarity of the connector-mapped
    student map and the teacher's map on the teacher's view; 1 = the student reproduces the teacher there)."""
    from fgkd.distill.connectors import apply_connectors
    from fgkd.lit.detection import batch_images
    from fgkd.metrics.detection import split_targets
    from fgkd.metrics.detection_figures import draw_truth
    from fgkd.predict import Prediction, draw

    device = module.device
    names = list(module.class_names)
    images = batch_images(sample, module.val_view).to(device)
    preds = module.student.postprocess(module.student(images), **{**module.postprocess_kwargs, "conf": conf})
    truths = split_targets(sample["targets"], images.shape[0])
    media: dict[str, list[MediaImage]] = {"val/predictions": []}
    for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        raw = to_uint8(images[i])
        boxes, scores, labels = (pred[k].cpu().numpy() for k in ("boxes", "scores", "labels"))
        drawn = draw(draw_truth(raw.copy(), truth), Prediction(None, boxes, scores, labels), names)  # type: ignore[arg-type]
        media["val/predictions"].append(MediaImage(
            drawn, f"{len(scores)} predicted (conf ≥ {conf}), {len(truth['boxes'])} true", raw,
            {"predictions": wandb_boxes(boxes, labels, names, scores),
             "ground_truth": wandb_boxes(truth["boxes"].numpy(), truth["labels"].numpy(), names)}))
    teacher_images = sample.get("teacher_images")
    if teacher_images is not None:
        media["val/teacher_view"] = [MediaImage(side_by_side(to_uint8(x), to_uint8(xm), gap=2), "X | X_M (the teacher's view)")
                                     for x, xm in zip(sample["images"], teacher_images, strict=True)]
    distiller = getattr(module, "distiller", None)
    if distiller is not None and distiller.student_taps:
        student_view = batch_images(sample, module.view).to(device)
        with distiller.record(module.student) as taps:
            module.student(student_view)
        _, teacher_feats = distiller.teacher.forward(batch_images(sample, module.teacher_view).to(device),
                                                     distiller.teacher_taps, need_output=False)
        mapped = apply_connectors(distiller.connectors, taps.features)
        for name, s, t in zip(distiller.names, mapped, teacher_feats, strict=True):
            similarity = torch.nn.functional.cosine_similarity(s.float(), t.float(), dim=1).cpu().numpy()
            media[f"val/kd_cosine/{name}"] = [
                MediaImage(side_by_side(to_uint8(student_view[i]), heat_overlay(to_uint8(student_view[i]), sim, -1.0, 1.0), gap=2),
                           f"{name}: mean cosine {float(sim.mean()):.3f} (jet: -1 blue … 1 red)")
                for i, sim in enumerate(similarity)]
    return media


def anomaly_media(module: Any, sample: Mapping[str, Any]) -> dict[str, list[MediaImage]]:
    """``val/anomaly_maps``: image | ground truth outline | heat map (one colour scale for the sample), and
    ``val/score_histogram`` of the whole split's image scores (normal vs defective)."""
    from fgkd.data.anomaly_datamodule import IMAGENET_MEAN, IMAGENET_STD

    images = sample["images"].to(module.device)
    maps, scores = module.model.predict(images)
    maps = maps.float().cpu().numpy()
    vmin, vmax = float(np.percentile(maps, 1)), float(maps.max())
    items = []
    for i in range(images.shape[0]):
        image = to_uint8(images[i], IMAGENET_MEAN, IMAGENET_STD)
        outline = image.copy()
        mask = sample["masks"][i].reshape(image.shape[:2]).numpy().astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outline, contours, -1, (255, 0, 0), 1)
        label = "defective" if int(sample["labels"][i]) else "normal"
        items.append(MediaImage(side_by_side(image, outline, heat_overlay(image, maps[i], vmin, vmax), gap=2),
                                f"{label}, score {float(scores[i]):.3f}"))
    media = {"val/anomaly_maps": items}
    outputs = getattr(module, "last_outputs", None)
    if outputs:
        from fgkd.models.anomaly.components.anomaly_map import image_scores

        media["val/score_histogram"] = [MediaImage(score_histogram(image_scores(outputs["maps"]).numpy(),
                                                                   outputs["labels"].numpy()), "image scores")]
    return media


def score_histogram(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Normal vs defective image scores as an RGB picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fgkd.metrics.anomaly_figures import plot_score_histogram

    fig, ax = plt.subplots(figsize=(4.8, 3.2), dpi=100)
    plot_score_histogram(ax, scores, labels)
    fig.tight_layout()
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture
