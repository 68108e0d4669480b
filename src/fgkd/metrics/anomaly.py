"""Anomaly-detection metrics: image AUROC, pixel AUROC and the exact AU-PRO (Bergmann et al., IJCV 2021).

AU-PRO (``shared/reference/anomaly_spec.md`` §2), the official MVTec definition:

* PRO(t) = mean over *all* ground-truth connected components of the whole test set (8-connectivity) of
  ``|region ∩ {score > t}| / |region|``; FPR(t) = false-positive pixels / *all* anomaly-free pixels
  (normal images included);
* exact thresholds: one global descending sort of every pixel score, cumulative sums (float64), ties merged
  (the last point of each run of equal scores is kept), values clipped to ≤ 1, (0, 0) and (1, 1) appended;
* AU-PRO = ∫₀^limit PRO dFPR / limit with PRO linearly interpolated at ``fpr_limit`` (default 0.3).

It is *not* RD4AD's per-image 200-threshold ``compute_pro`` (normalised by the largest retained FPR), which
gives different numbers (anomaly_spec.md §2 pitfalls). AUROCs come from torchmetrics (exact, sorted).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.classification import binary_auroc

#: metric keys in table order and the papers' headers
#: 8-connectivity for the ground-truth components (scipy's default would be 4)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _check_maps(scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, masks = _as_numpy(scores), _as_numpy(masks)
    if scores.ndim == 2:
        scores, masks = scores[None], masks[None]
    if scores.ndim != 3 or scores.shape != masks.shape:
        raise ValueError(f"anomaly maps and masks must both be [N, H, W] (or [H, W]) of one shape, got "
                         f"{scores.shape} and {masks.shape}; resize masks to the map size with nearest first")
    if not np.isfinite(scores).all():
        raise ValueError("anomaly maps contain NaN or inf; check the model output before scoring")
    unique = np.unique(masks)
    if not np.isin(unique, (0, 1)).all():
        raise ValueError(f"masks must be binary (0/1 or bool), got values {unique[:6].tolist()}...; binarise "
                         "anti-aliased masks (e.g. mask > 127) before scoring")
    return scores.astype(np.float64), masks.astype(bool)


def pro_curve(scores: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` of every distinct threshold, from (0, 0) to (1, 1) (module docstring)."""
    scores, masks = _check_maps(scores, masks)
    labels = np.zeros(masks.shape, dtype=np.int64)
    regions = 0
    for index, mask in enumerate(masks):
        image_labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        labels[index] = np.where(image_labels > 0, image_labels + regions, 0)
        regions += count
    ok = ~masks
    num_ok = int(ok.sum())
    if regions == 0:
        raise ValueError("AU-PRO needs at least one anomalous region in the masks (the test set has none)")
    if num_ok == 0:
        raise ValueError("AU-PRO needs anomaly-free pixels (every test pixel is marked anomalous)")
    flat_labels = labels.ravel()
    sizes = np.bincount(flat_labels, minlength=regions + 1).astype(np.float64)
    pro_change = np.where(flat_labels > 0, 1.0 / sizes[flat_labels], 0.0)
    fp_change = ok.ravel().astype(np.float64)
    flat_scores = scores.ravel()
    order = np.argsort(-flat_scores, kind="stable")
    fpr = np.cumsum(fp_change[order]) / num_ok
    pro = np.cumsum(pro_change[order]) / regions
    sorted_scores = flat_scores[order]
    last_of_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr, pro = np.minimum(fpr[last_of_run], 1.0), np.minimum(pro[last_of_run], 1.0)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def area_under_limit(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under ``y(x)`` for ``x`` in [0, x_max] (``x`` non-decreasing), ``y`` linearly
    interpolated at ``x_max`` when it falls between two points."""
    if not 0 < x_max <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {x_max}")
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max:  # interpolate between the last point inside and the first one beyond
        after = int(np.argmax(~inside))
        x0, x1, y0, y1 = x[after - 1], x[after], y[after - 1], y[after]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.append(xs, x_max), np.append(ys, y_at)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(scores: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Exact AU-PRO up to ``fpr_limit``, normalised by it (1.0 = every region found before any false positive)."""
    fpr, pro = pro_curve(scores, masks)
    return area_under_limit(fpr, pro, fpr_limit) / fpr_limit


def anomaly_metrics(scores: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor,
                    labels: np.ndarray | torch.Tensor | None = None, fpr_limit: float = 0.3) -> dict[str, float]:
    """``image_auroc`` (image score = max of its map), ``pixel_auroc`` and ``aupro``.

    ``labels``: the image labels (1 = defective), from the dataset's folders; pass them, because a defective
    image with an all-zero mask is still defective (anomaly_spec.md §0.6). Without them the label is
    ``mask.any()`` (RD4AD's convention, for arrays that have no labels). A metric that is undefined for the
    data (one class only) is NaN."""
    scores, masks = _check_maps(scores, masks)
    image_scores = torch.from_numpy(scores.reshape(len(scores), -1).max(1))
    if labels is None:
        image_labels = torch.from_numpy(masks.reshape(len(masks), -1).any(1)).long()
    else:
        image_labels = torch.as_tensor(_as_numpy(labels)).long().reshape(-1)
        if len(image_labels) != len(scores):
            raise ValueError(f"{len(image_labels)} labels for {len(scores)} maps")
    pixel_scores, pixel_labels = torch.from_numpy(scores.ravel()), torch.from_numpy(masks.ravel()).long()
    both_classes = 0 < int(image_labels.sum()) < len(image_labels)
    return {
        "image_auroc": float(binary_auroc(image_scores, image_labels)) if both_classes else float("nan"),
        "pixel_auroc": float(binary_auroc(pixel_scores, pixel_labels)) if 0 < int(pixel_labels.sum()) < len(pixel_labels) else float("nan"),
        "aupro": aupro(scores, masks, fpr_limit) if bool(masks.any()) and not bool(masks.all()) else float("nan"),
    }


def aupro_rd4ad(scores: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, fpr_limit: float = 0.3,
                num_thresholds: int = 200) -> float:
    """RD4AD's PRO, for comparison with papers that report it (anomaly_spec.md §2; *not* the official AU-PRO).

    Per anomalous image: ``num_thresholds`` thresholds evenly spaced between that map's min and max, PRO over
    the image's own 8-connected regions, FPR over its own normal pixels; points with FPR < ``fpr_limit`` are
    kept, FPR is rescaled by the largest kept FPR and the trapezoidal area is taken; the mean over images.
    Images whose kept FPRs are all 0 give NaN and are left out of the mean.
    """
    scores, masks = _check_maps(scores, masks)
    values = []
    for amap, mask in zip(scores, masks, strict=True):
        if not mask.any() or mask.all():
            continue
        labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        regions = [labels == k for k in range(1, count + 1)]
        ok = ~mask
        points = []
        for threshold in np.linspace(amap.min(), amap.max(), num_thresholds):
            predicted = amap > threshold
            pro = float(np.mean([(predicted & region).sum() / region.sum() for region in regions]))
            points.append(((predicted & ok).sum() / ok.sum(), pro))
        fpr, pro = np.array(sorted(p for p in points if p[0] < fpr_limit)).T if points else (np.array([]),) * 2
        if fpr.size < 2 or fpr.max() <= 0:
            continue
        fpr = fpr / fpr.max()
        values.append(float(np.sum((fpr[1:] - fpr[:-1]) * (pro[1:] + pro[:-1]) / 2.0)))
    return float(np.mean(values)) if values else float("nan")


def f1_optimal_threshold(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                         bins: int = 1024) -> tuple[float, float]:
    """``(threshold, F1)``: of ``bins`` evenly spaced candidates between the smallest and largest score, the one
    whose rule ``score > threshold`` has the best F1 against ``labels`` (1 = defective; anomalib's adaptive
    threshold). NaN when ``labels`` hold one class only."""
    s = torch.as_tensor(_as_numpy(scores), dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(_as_numpy(labels)).reshape(-1).bool()
    if s.numel() != y.numel():
        raise ValueError(f"{s.numel()} scores vs {y.numel()} labels")
    if bool(y.all()) or not bool(y.any()):
        return float("nan"), float("nan")
    candidates = torch.linspace(float(s.min()), float(s.max()), bins, dtype=torch.float64)
    # counts of positives / all above each candidate from one sort (memory O(N), not O(N * bins))
    order = torch.argsort(s)
    sorted_scores, sorted_labels = s[order], y[order].double()
    above = s.numel() - torch.searchsorted(sorted_scores, candidates, right=True)
    positives_from = torch.cat([torch.flip(torch.cumsum(torch.flip(sorted_labels, [0]), 0), [0]), torch.zeros(1, dtype=torch.float64)])
    tp = positives_from[s.numel() - above]
    fp, fn = above.double() - tp, float(y.sum()) - tp
    f1 = 2 * tp / torch.clamp(2 * tp + fp + fn, min=1e-12)
    best = int(torch.argmax(f1))
    return float(candidates[best]), float(f1[best])


def adaptive_thresholds(maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor,
                        labels: np.ndarray | torch.Tensor) -> dict[str, float]:
    """F1-optimal image threshold (on the image score = map maximum) and pixel threshold (on the map values)."""
    maps_t = torch.as_tensor(_as_numpy(maps)).float()
    image_threshold, image_f1 = f1_optimal_threshold(maps_t.flatten(1).amax(1), labels)
    pixel_threshold, pixel_f1 = f1_optimal_threshold(maps_t, torch.as_tensor(_as_numpy(masks)).bool())
    return {"image": image_threshold, "image_f1": image_f1, "pixel": pixel_threshold, "pixel_f1": pixel_f1}
