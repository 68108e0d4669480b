"""The pictures of a finished detection fit, from one pass of its exported model over the validation split:

* ``pr_curves.png`` — precision against recall per class at IoU 0.50 (COCO's 101 recall points, area all,
  100 detections; the same evaluation as the reported mAP50, so each curve's area is that class's AP50);
* ``confusion_matrix.png`` / ``.csv`` — rows the true class (+ background: false positives), columns the
  predicted class (+ background: missed objects), from detections with score ≥ ``conf`` (0.25, predict.py's
  default) matched greedily to ground truth at IoU ≥ ``iou`` (0.45), class-agnostic, highest IoU first;
* ``val_predictions.png`` — the first validation images with ground truth (white) and predictions (coloured,
  ≥ ``conf``); when the batches carry the teacher's view X_M (FAKD), it is shown beside each image.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from fgkd.io import atomic_save
from fgkd.metrics.detection import build_map_metric, split_targets
from fgkd.visualize import to_uint8

log = logging.getLogger(__name__)

FIGURES = ("pr_curves.png", "confusion_matrix.png", "val_predictions.png")


def confusion_matrix(preds: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
                     num_classes: int, conf: float = 0.25, iou: float = 0.45) -> np.ndarray:
    """``[nc + 1, nc + 1]`` counts (module docstring); index ``nc`` is the background."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for pred, target in zip(preds, targets, strict=True):
        keep = pred["scores"] >= conf
        p_boxes, p_labels = pred["boxes"][keep], pred["labels"][keep].long()
        t_boxes, t_labels = target["boxes"], target["labels"].long()
        matched_p, matched_t = set(), set()
        if len(p_boxes) and len(t_boxes):
            ious = box_iou(t_boxes.float(), p_boxes.float())
            pairs = torch.nonzero(ious >= iou)
            order = torch.argsort(ious[pairs[:, 0], pairs[:, 1]], descending=True)
            for ti, pi in pairs[order].tolist():
                if ti in matched_t or pi in matched_p:
                    continue
                matched_t.add(ti)
                matched_p.add(pi)
                matrix[int(t_labels[ti]), int(p_labels[pi])] += 1
        for ti in range(len(t_boxes)):
            if ti not in matched_t:
                matrix[int(t_labels[ti]), num_classes] += 1
        for pi in range(len(p_boxes)):
            if pi not in matched_p:
                matrix[num_classes, int(p_labels[pi])] += 1
    return matrix


@torch.no_grad()
def collect_predictions(detector: torch.nn.Module, loader: Any, view_key: str, postprocess: dict[str, Any],
                        keep_images: int = 8) -> tuple[list, list, list]:
    """``(preds, targets, shown)`` over the loader; ``shown``: the first images (X, X_M or None, pred, target)."""
    device = next(detector.parameters()).device
    preds, targets, shown = [], [], []
    for batch in loader:
        images = batch[view_key].to(device)
        out = detector.postprocess(detector(images), **postprocess)
        out = [{k: v.detach().cpu() for k, v in p.items()} for p in out]
        truth = split_targets(batch["targets"], images.shape[0])
        preds += out
        targets += truth
        for i in range(images.shape[0]):
            if len(shown) < keep_images:
                xm = batch.get("teacher_images")
                shown.append((batch["images"][i], xm[i] if xm is not None and xm is not batch["images"] else None,
                              out[i], truth[i]))
    return preds, targets, shown


_SHOWN_SIZE = 320


def draw_truth(canvas: np.ndarray, target: dict[str, torch.Tensor]) -> np.ndarray:
    import cv2

    for box in target["boxes"].tolist():
        x1, y1, x2, y2 = (round(v) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def write_detection_figures(output_dir: Path, preds: list, targets: list, shown: list, class_names: Sequence[str],
                            title: str = "", conf: float = 0.25, iou: float = 0.45) -> list[Path]:
    """Write the three figures (module docstring); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fgkd.predict import Prediction, draw

    names = list(class_names)
    nc = len(names)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = output_dir / name
        atomic_save(path, lambda handle: fig.savefig(handle, format="png"))
        plt.close(fig)
        written.append(path)

    # PR curves at IoU 0.50 from the same COCO evaluation as the reported metrics
    metric = build_map_metric(extended_summary=True)
    metric.update(preds, targets)
    result = metric.compute()
    precision = result["precision"]  # [T, R, K, A, M]
    classes = [int(c) for c in result["classes"].reshape(-1).tolist()]
    recall = np.linspace(0, 1, precision.shape[1])
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    for k, cls in enumerate(classes):
        curve = precision[0, :, k, 0, -1].numpy()
        if (curve < 0).all():
            continue  # no ground truth of this class in the split
        curve = np.clip(curve, 0, None)
        label = names[cls] if cls < nc else str(cls)
        ax.plot(recall, curve, label=f"{label} AP50 {curve.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"PR @ IoU 0.50 {title}".strip())
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save(fig, "pr_curves.png")

    matrix = confusion_matrix(preds, targets, nc, conf, iou)
    labels = [*names, "background"]
    with open(output_dir / "confusion_matrix.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *labels])
        for label, row in zip(labels, matrix.tolist(), strict=True):
            writer.writerow([label, *row])
    fig, ax = plt.subplots(figsize=(1.2 * (nc + 1) + 2, 1.0 * (nc + 1) + 1.6), dpi=110)
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(nc + 1):
        for j in range(nc + 1):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(nc + 1), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(nc + 1), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"conf ≥ {conf}, IoU ≥ {iou} {title}".strip())
    fig.tight_layout()
    save(fig, "confusion_matrix.png")

    if shown:
        with_xm = any(xm is not None for _, xm, _, _ in shown)
        cols = 2 if with_xm else 1
        fig, axes = plt.subplots(len(shown), cols, figsize=(3.2 * cols, 2.6 * len(shown)), squeeze=False, dpi=110)
        for row, (image, xm, pred, target) in enumerate(shown):
            keep = pred["scores"] >= conf
            scale = max(1.0, _SHOWN_SIZE / max(image.shape[-2:]))  # small training sizes: labels stay readable
            truth = {"boxes": target["boxes"] * scale}
            drawn = draw(draw_truth(to_uint8(image, scale=scale), truth),
                         Prediction(Path(""), pred["boxes"][keep].numpy() * scale, pred["scores"][keep].numpy(),
                                    pred["labels"][keep].numpy()), names)
            axes[row, 0].imshow(drawn)
            axes[row, 0].set_title(f"X: {int(keep.sum())} predicted, {len(target['boxes'])} true", fontsize=7)
            if with_xm:
                axes[row, 1].imshow(draw_truth(to_uint8(xm, scale=scale), truth) if xm is not None else np.zeros_like(drawn))
                axes[row, 1].set_title("X_M (the teacher's view)", fontsize=7)
            for ax in axes[row]:
                ax.axis("off")
        fig.tight_layout()
        save(fig, "val_predictions.png")
    return written
