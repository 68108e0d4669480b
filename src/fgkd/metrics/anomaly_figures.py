"""Pictures of an anomaly run: test images with their masks and heat maps, and the image-score histogram.

* ``maps.png`` — a grid of test images (the defective ones first, the highest- and lowest-scored normal ones
  after): the image, the ground-truth outline over it, the anomaly map as a heat-map overlay (one colour scale
  for the whole grid, so maps compare across images);
* ``score_histogram.png`` — image scores (map maxima) of normal vs defective test images (paper 001 Fig. 5).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from fgkd.data.anomaly_datamodule import AnomalyDataset, load_rgb

MAPS_FILE = "maps.png"
HISTOGRAM_FILE = "score_histogram.png"


def _pick(labels: np.ndarray, scores: np.ndarray, count: int) -> list[int]:
    defective = [int(i) for i in np.argsort(-scores) if labels[i] == 1]
    normal = [int(i) for i in np.argsort(-scores) if labels[i] == 0]
    n_def = min(len(defective), max(count - min(len(normal), 2), count * 2 // 3))
    chosen = defective[:n_def]
    rest = count - len(chosen)
    if rest > 0 and normal:
        chosen += normal[: (rest + 1) // 2] + normal[::-1][: rest // 2]
    return list(dict.fromkeys(chosen))[:count]


def write_figures(output_dir: str | Path, outputs: Mapping[str, torch.Tensor], test_set: AnomalyDataset,
                  title: str = "", count: int = 8) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    maps = outputs["maps"].numpy()
    masks = outputs["masks"].numpy().astype(bool)
    labels = outputs["labels"].numpy()
    index = outputs["index"].numpy()
    scores = maps.reshape(len(maps), -1).max(1)
    chosen = _pick(labels, scores, count)
    vmin, vmax = float(np.percentile(maps, 1)), float(maps.max())
    fig, axes = plt.subplots(3, max(len(chosen), 1), figsize=(2.0 * max(len(chosen), 1), 6.4), squeeze=False)
    for col, i in enumerate(chosen):
        sample = test_set.samples[int(index[i])]
        image = load_rgb(sample.image, maps.shape[-1], test_set.resize_mode)
        outline = image.copy()
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outline, contours, -1, (255, 0, 0), 1)
        axes[0, col].imshow(image)
        axes[0, col].set_title(f"{sample.defect}\nscore {scores[i]:.3f}", fontsize=8)
        axes[1, col].imshow(outline)
        axes[2, col].imshow(image)
        axes[2, col].imshow(maps[i], cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    for ax in axes.ravel():
        ax.axis("off")
    for row, name in enumerate(("image", "ground truth", "anomaly map")):
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    maps_path = output_dir / MAPS_FILE
    fig.savefig(maps_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    plot_score_histogram(ax, scores, labels)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    hist_path = output_dir / HISTOGRAM_FILE
    fig.savefig(hist_path, dpi=110)
    plt.close(fig)
    return [maps_path, hist_path]


def plot_score_histogram(ax: Any, scores: np.ndarray, labels: np.ndarray) -> None:
    """Normal (green) vs defective (red) image scores on one matplotlib axis."""
    bins = np.linspace(scores.min(), scores.max() + 1e-9, 25)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"normal ({int((labels == 0).sum())})", color="tab:green")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"defective ({int((labels == 1).sum())})", color="tab:red")
    ax.set_xlabel("image score (max of the anomaly map)")
    ax.set_ylabel("test images")
    ax.legend(fontsize=8)
