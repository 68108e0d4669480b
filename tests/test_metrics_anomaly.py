"""fgkd.metrics.anomaly: exact AU-PRO against hand-computed values and a brute-force threshold sweep, AUROCs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from fgkd.metrics.anomaly import anomaly_metrics, area_under_limit, aupro, pro_curve


def test_hand_computed_curve_and_areas():
    # 1x4 image: regions {0} and {2} (not adjacent), OK pixels {1, 3}
    scores = np.array([[0.9, 0.8, 0.2, 0.1]])
    masks = np.array([[1, 0, 1, 0]])
    fpr, pro = pro_curve(scores, masks)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1, 1, 1])
    assert aupro(scores, masks, fpr_limit=1.0) == pytest.approx(0.75)  # 0.5 * 0.5 + 1 * 0.5
    assert aupro(scores, masks, fpr_limit=0.3) == pytest.approx(0.5)  # PRO is 0.5 on [0, 0.3]
    assert aupro(scores, masks, fpr_limit=0.75) == pytest.approx((0.25 + 0.25) / 0.75)


def test_ties_are_merged_into_one_point_and_regions_are_eight_connected():
    # diagonal neighbours form ONE region (8-connectivity); the three equal scores are one threshold
    masks = np.array([[1, 0], [0, 1]])
    scores = np.array([[0.5, 0.5], [0.5, 0.1]])
    fpr, pro = pro_curve(scores, masks)
    np.testing.assert_allclose(fpr, [0, 1, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 1, 1])  # one region of 2 px: half of it found at 0.5
    assert aupro(scores, masks, fpr_limit=1.0) == pytest.approx(0.25)


def _brute_force_aupro(scores: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Every distinct threshold evaluated on its own: PRO(t) over all components, FPR(t) over all OK pixels."""
    labels = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(i, labels[i] == k) for i in range(len(masks)) for k in range(1, labels[i].max() + 1)]
    ok = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in sorted(np.unique(scores), reverse=True):
        predicted = scores >= t
        fpr = (predicted & ok).sum() / ok.sum()
        pro = np.mean([(predicted[i] & region).sum() / region.sum() for i, region in regions])
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    x, y = np.array(points).T
    return area_under_limit(x, y, limit) / limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_brute_force_threshold_sweep_with_normal_images_and_ties(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), dtype=bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 8:11, 9:11] = True
    masks[1, 5:9, 3:4] = True  # image 2 and 3 are defect-free: they add OK pixels only
    scores = np.round(rng.random(masks.shape) + 0.6 * masks, 2)  # rounding makes many ties
    for limit in (0.05, 0.3, 1.0):
        assert aupro(scores, masks, limit) == pytest.approx(_brute_force_aupro(scores, masks, limit), abs=1e-12)


def test_perfect_and_inverted_detectors():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0)
    assert aupro(1.0 - masks.astype(float), masks) == pytest.approx(0.0)
    metrics = anomaly_metrics(masks.astype(float), masks)
    assert metrics == {"image_auroc": 1.0, "pixel_auroc": 1.0, "aupro": pytest.approx(1.0)}


def test_auroc_values_and_undefined_cases():
    masks = np.zeros((3, 2, 2), dtype=bool)
    masks[2, 0, 0] = True
    scores = np.zeros((3, 2, 2))
    scores[0, 1, 1], scores[1, 0, 0], scores[2, 0, 0] = 0.9, 0.2, 0.5  # image maxima 0.9 (normal), 0.2, 0.5
    metrics = anomaly_metrics(scores, masks)
    assert metrics["image_auroc"] == pytest.approx(0.5)  # the defective image beats one of two normal ones
    assert metrics["pixel_auroc"] == pytest.approx(10 / 11)  # 0.5 beats 10 of the 11 OK pixels
    assert math.isnan(anomaly_metrics(scores, np.zeros_like(masks))["aupro"])


def test_image_labels_come_from_the_caller_not_the_mask():
    """A defective image with an empty mask stays defective (anomaly_spec.md §0.6)."""
    masks = np.zeros((3, 2, 2), dtype=bool)
    masks[2, 0, 0] = True
    scores = np.zeros((3, 2, 2))
    scores[0, 0, 0], scores[1, 0, 0], scores[2, 0, 0] = 0.1, 0.8, 0.9  # image 1: defective, all-zero mask
    by_mask = anomaly_metrics(scores, masks)["image_auroc"]
    by_label = anomaly_metrics(scores, masks, labels=[0, 1, 1])["image_auroc"]
    assert by_mask == pytest.approx(1.0)  # mask-derived: image 1 is 'normal' (0.8) and image 2 (0.9) beats both
    assert by_label == pytest.approx(1.0)
    scores[1, 0, 0] = 0.05  # the empty-mask defect now scores lowest: it must cost the labelled AUROC
    assert anomaly_metrics(scores, masks, labels=[0, 1, 1])["image_auroc"] == pytest.approx(0.5)
    assert anomaly_metrics(scores, masks)["image_auroc"] == pytest.approx(1.0)  # mask-derived labels hide it
    with pytest.raises(ValueError, match="labels"):
        anomaly_metrics(scores, masks, labels=[0, 1])


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="same|one shape"):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="binar"):
        aupro(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="at least one anomalous region"):
        aupro(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.full((1, 2, 2), np.nan), np.eye(2)[None])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.zeros((1, 2, 2)), np.eye(2)[None], fpr_limit=0.0)


def test_rd4ad_per_image_variant_differs_from_the_official_metric_as_documented():
    from fgkd.metrics.anomaly import aupro_rd4ad

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 3:7, 3:7] = True
    masks[1, 9:12, 2:14] = True
    scores = rng.random(masks.shape) + 0.8 * masks
    value = aupro_rd4ad(scores, masks)
    assert 0.0 < value <= 1.0
    # a separable map keeps only FPR-0 points: RD4AD's rescaling by the largest kept FPR is then undefined
    assert math.isnan(aupro_rd4ad(masks.astype(float) + 0.01 * rng.random(masks.shape), masks))
    assert value != pytest.approx(aupro(scores, masks))  # per-image, rescaled FPR: another number


def test_f1_optimal_threshold_equals_a_brute_force_search():
    from fgkd.metrics.anomaly import f1_optimal_threshold

    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    scores = rng.normal(size=500) + 1.2 * labels
    threshold, f1 = f1_optimal_threshold(scores, labels, bins=64)
    best = (-1.0, None)
    for c in np.linspace(scores.min(), scores.max(), 64):
        tp = int(((scores > c) & labels).sum())
        fp, fn = int(((scores > c) & ~labels).sum()), int(((scores <= c) & labels).sum())
        value = 2 * tp / max(2 * tp + fp + fn, 1)
        if value > best[0]:
            best = (value, c)
    assert f1 == pytest.approx(best[0]) and threshold == pytest.approx(best[1])
    assert np.isnan(f1_optimal_threshold(scores, np.zeros(500, bool))[0])  # one class: no threshold
