"""Target padding, the TAL / ATSS assigners and the YOLOv8 / YOLOv6 losses."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torchvision.ops import box_iou

from fgkd.models.detectors.assigners import ATSSAssigner, TaskAlignedAssigner, pad_targets, points_in_boxes
from fgkd.models.detectors.iou import bbox_iou
from fgkd.models.detectors.losses import YOLOv6Loss, YOLOv8Loss, dfl_loss, varifocal_loss
from fgkd.models.detectors.ops import bbox2dist, make_anchors, postprocess

LN2 = math.log(2)


def grid(size: int, strides: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return make_anchors([torch.zeros(1, 1, size // s, size // s) for s in strides], strides)


# ----------------------------------------------------------------------------------------- pad_targets
def test_pad_targets_groups_rows_per_image_in_order():
    targets = torch.tensor(
        [[2, 1, 5, 5, 9, 9], [0, 0, 1, 1, 2, 2], [2, 0, 0, 0, 4, 4], [0, 2, 3, 3, 6, 6]], dtype=torch.float32
    )
    labels, boxes, mask = pad_targets(targets, batch_size=4, num_classes=3)
    assert labels.shape == (4, 2, 1) and boxes.shape == (4, 2, 4) and mask.shape == (4, 2, 1)
    assert mask[..., 0].tolist() == [[True, True], [False, False], [True, True], [False, False]]
    assert labels[..., 0].tolist() == [[0, 2], [0, 0], [1, 0], [0, 0]]  # original order kept per image
    assert boxes[0].tolist() == [[1, 1, 2, 2], [3, 3, 6, 6]] and boxes[2, 0].tolist() == [5, 5, 9, 9]
    assert boxes[1].eq(0).all()


def test_pad_targets_empty_and_errors():
    labels, boxes, mask = pad_targets(torch.zeros(0, 6), batch_size=3)
    assert labels.shape == (3, 0, 1) and boxes.shape == (3, 0, 4) and mask.shape == (3, 0, 1)
    with pytest.raises(ValueError, match="batch_index"):
        pad_targets(torch.tensor([[3.0, 0, 0, 0, 1, 1]]), batch_size=3)
    with pytest.raises(ValueError, match="num_classes=2"):
        pad_targets(torch.tensor([[0.0, 2, 0, 0, 1, 1]]), batch_size=1, num_classes=2)
    with pytest.raises(ValueError, match=r"\[M, 6\]"):
        pad_targets(torch.zeros(4, 5), batch_size=1)


def test_points_in_boxes_is_strict():
    points = torch.tensor([[5.0, 5], [0, 5], [10, 10], [9.9, 0.1], [11, 5]])
    boxes = torch.tensor([[[0.0, 0, 10, 10]]])  # [B=1, G=1, 4]
    # centre inside; on the left edge, on the corner -> outside; just inside the corner -> inside
    assert points_in_boxes(points, boxes)[0, 0].tolist() == [True, False, False, True, False]


# ----------------------------------------------------------------------------------------- TAL golden
def tal_golden_case():
    """32x32 input, strides 8 (4x4 anchors, idx 0-15) and 16 (2x2, idx 16-19); 2 classes.

    gt0 = [0,0,16,16] class 0: anchors strictly inside: 0 (4,4), 1 (12,4), 4 (4,12), 5 (12,12), 16 (8,8).
    gt1 = [8,8,32,32] class 1: inside: 5, 6, 7, 9, 10, 11, 13, 14, 15 and 19 (24,24); anchor 16 (8,8) lies
    on gt1's corner -> not inside. Anchor 5 is inside both.
    Predicted boxes: [0,0,16,16] (= gt0) everywhere, except anchor 5 [4,4,20,20] and anchor 10 (= gt1).
      IoU(anchor5 box, gt0) = 12*12 / (256+256-144) = 144/368 = 0.3913
      IoU(anchor5 box, gt1) = 144 / (256+576-144) = 144/688 = 0.2093
      IoU(gt0-shaped box, gt1) = 64 / (256+576-64) = 1/12
    Scores (alpha = beta = 1, metric t = s * IoU, topk 2):
      gt0: t0 = 0.5*1, t1 = t4 = 0.05*1, t5 = 0.3*0.3913 = 0.1174, t16 = 0.1*1 -> top-2 = {0, 5}
      gt1: t5 = 0.9*0.2093 = 0.1884, t10 = 0.6*1, others 0.1/12 -> top-2 = {10, 5}
    Anchor 5 is picked by both; gt0 has the larger IoU (0.3913 > 0.2093), although gt1 has the larger
    metric -> anchor 5 goes to gt0 and gt1 keeps only anchor 10.
    Soft targets t * maxIoU(gt) / max t(gt): anchor0 0.5*1/0.5 = 1, anchor5 0.1174*1/0.5 = 0.2348,
    anchor10 0.6*1/0.6 = 1.
    """
    anchors, strides = grid(32, [8, 16])
    pred_boxes = torch.tensor([0.0, 0, 16, 16]).repeat(20, 1)
    pred_boxes[5] = torch.tensor([4.0, 4, 20, 20])
    pred_boxes[10] = torch.tensor([8.0, 8, 32, 32])
    scores = torch.tensor([0.05, 0.1]).repeat(20, 1)
    scores[0, 0], scores[5, 0], scores[16, 0] = 0.5, 0.3, 0.1
    scores[5, 1], scores[10, 1] = 0.9, 0.6
    # gt1 first, so the IoU winner of anchor 5 (gt0) is not simply the first gt
    targets = torch.tensor([[0, 1, 8, 8, 32, 32], [0, 0, 0, 0, 16, 16]], dtype=torch.float32)
    return anchors, strides, pred_boxes, scores, targets


def test_tal_golden_assignment():
    anchors, _, pred_boxes, scores, targets = tal_golden_case()
    # image 1 of the batch has no gts
    labels, boxes, mask = pad_targets(targets, batch_size=2, num_classes=2)
    assigner = TaskAlignedAssigner(topk=2, num_classes=2, alpha=1.0, beta=1.0, iou_kind="iou")
    out = assigner(scores.repeat(2, 1, 1), pred_boxes.repeat(2, 1, 1), anchors, labels, boxes, mask)

    assert out.fg_mask[0].nonzero().flatten().tolist() == [0, 5, 10]
    assert not out.fg_mask[1].any()
    assert out.target_gt_idx[0, [0, 5, 10]].tolist() == [1, 1, 0]  # gt0 is row 1 of the targets
    expected_labels = torch.full((20,), 2)  # background label = num_classes
    expected_labels[[0, 5, 10]] = torch.tensor([0, 0, 1])
    assert out.target_labels[0].tolist() == expected_labels.tolist()
    assert (out.target_labels[1] == 2).all()
    assert out.target_boxes[0, 5].tolist() == [0, 0, 16, 16] and out.target_boxes[0, 10].tolist() == [8, 8, 32, 32]
    expected_scores = torch.zeros(20, 2)
    expected_scores[0, 0] = 1.0
    expected_scores[5, 0] = 0.3 * (144 / 368) / 0.5
    expected_scores[10, 1] = 1.0
    assert torch.allclose(out.target_scores[0], expected_scores, atol=1e-5)
    assert out.target_scores[1].eq(0).all()


def test_tal_overlap_goes_to_metric_winner_when_topk_excludes_it():
    # with topk=1, gt0's best anchor is 0 (t=0.5), so anchor 5 is picked by gt1 only and stays there
    anchors, _, pred_boxes, scores, targets = tal_golden_case()
    labels, boxes, mask = pad_targets(targets, 1, 2)
    out = TaskAlignedAssigner(1, 2, 1.0, 1.0, iou_kind="iou")(scores[None], pred_boxes[None], anchors, labels, boxes, mask)
    assert out.fg_mask[0].nonzero().flatten().tolist() == [0, 10]


def test_tal_anchor_claimed_by_several_gts_goes_to_the_highest_overlap_of_all_gts():
    """Issue 15.2: 2 anchors, 3 gts, top-k 1. gt0 and gt1 (small, class 0) both pick anchor 0; gt2 (contains
    both anchors, class 1) picks anchor 1 by its score. Anchor 0's IoU with gt2 (1.0) beats gt0/gt1 (0.405):
    the references give anchor 0 to gt2 although gt2's top-k did not pick it -> gt_idx [2, 2]."""
    anchors = torch.tensor([[5.0, 5.0], [15.0, 5.0]])
    pred_boxes = torch.tensor([[[0.0, 0.0, 20.0, 10.0], [0.0, 0.0, 20.0, 10.0]]])
    scores = torch.tensor([[[0.9, 0.1], [0.9, 0.9]]])
    targets = torch.tensor([[0, 0, 0, 0, 9, 9], [0, 0, 1, 1, 10, 10], [0, 1, 0, 0, 20, 10]], dtype=torch.float32)
    labels, boxes, mask = pad_targets(targets, 1, 2)
    out = TaskAlignedAssigner(1, 2, 1.0, 1.0, iou_kind="iou")(scores, pred_boxes, anchors, labels, boxes, mask)
    assert out.fg_mask[0].tolist() == [True, True]
    assert out.target_gt_idx[0].tolist() == [2, 2]
    assert out.target_labels[0].tolist() == [1, 1]


def test_tal_min_candidate_size_gives_tiny_gts_positives():
    """Issue 15.3: a 6 px gt between the stride-8 anchor points contains none of them: no positive at all;
    widened to 16 px for candidate selection (Ultralytics 8.4) it gets the 4 surrounding anchors."""
    anchors, _ = grid(32, [8])  # points at 4, 12, 20, 28
    targets = torch.tensor([[0, 0, 13, 13, 19, 19]], dtype=torch.float32)  # 6 px: centre 16, no point inside
    labels, boxes, mask = pad_targets(targets, 1, 1)
    pred_boxes = torch.tensor([8.0, 8.0, 24.0, 24.0]).repeat(1, len(anchors), 1)
    scores = torch.full((1, len(anchors), 1), 0.5)
    plain = TaskAlignedAssigner(10, 1, 0.5, 6.0, iou_kind="ciou")(scores, pred_boxes, anchors, labels, boxes, mask)
    assert int(plain.fg_mask.sum()) == 0
    widened = TaskAlignedAssigner(10, 1, 0.5, 6.0, iou_kind="ciou", min_candidate_size=16)(
        scores, pred_boxes, anchors, labels, boxes, mask)
    assert sorted(widened.fg_mask[0].nonzero().flatten().tolist()) == [5, 6, 9, 10]
    assert widened.target_boxes[0, 5].tolist() == [13, 13, 19, 19]  # the targets keep the real box
    with pytest.raises(ValueError, match="min_candidate_size"):
        TaskAlignedAssigner(min_candidate_size=-1)


def random_case(seed: int, batch: int = 2, gts: int = 4, size: int = 64):
    gen = torch.Generator().manual_seed(seed)
    anchors, strides = grid(size, [8, 16, 32])
    num_anchors = len(anchors)
    # predicted boxes around each anchor (so anchors inside a gt overlap it: no zero-metric ties)
    half = 6 + 14 * torch.rand(batch, num_anchors, 2, generator=gen)
    pred_boxes = torch.cat((anchors - half, anchors + half), -1)
    scores = 0.05 + 0.9 * torch.rand(batch, num_anchors, 3, generator=gen)
    rows = []
    for b in range(batch):
        n = gts - b  # images with different gt counts -> padding
        xy = torch.rand(n, 2, generator=gen) * (size - 24)
        wh = 8 + torch.rand(n, 2, generator=gen) * 28
        cls = torch.randint(0, 3, (n, 1), generator=gen).float()
        rows.append(torch.cat((torch.full((n, 1), float(b)), cls, xy, (xy + wh).clamp(max=size)), 1))
    return anchors, strides, pred_boxes, scores, torch.cat(rows)


def inside(anchor, box):
    return min(anchor[0] - box[0], anchor[1] - box[1], box[2] - anchor[0], box[3] - anchor[1]) > 1e-9


def tal_reference(scores, pred_boxes, anchors, targets, topk, alpha, beta, num_classes):
    """Loop-by-loop Task-Aligned assignment, written straight from the description (for cross-checks)."""
    batch, num_anchors, _ = scores.shape
    result_scores = torch.zeros(batch, num_anchors, num_classes)
    result_gt = {}
    for b in range(batch):
        gts = [row for row in targets.tolist() if int(row[0]) == b]
        ious, metrics, picked = {}, {}, {}
        for g, (_, cls, *box) in enumerate(gts):
            candidates = []
            for a in range(num_anchors):
                if inside(anchors[a].tolist(), box):
                    iou = max(bbox_iou(torch.tensor(box), pred_boxes[b, a], "iou").item(), 0.0)
                    ious[g, a] = iou
                    metrics[g, a] = scores[b, a, int(cls)].item() ** alpha * iou**beta
                    candidates.append(a)
            picked[g] = sorted(candidates, key=lambda a: -metrics[g, a])[:topk]
        owners = {}
        for g, anchor_list in picked.items():
            for a in anchor_list:
                owners.setdefault(a, []).append(g)
        # an anchor picked by several gts: the gt of highest IoU among ALL gts containing it (Ultralytics /
        # YOLOv6 select_highest_overlaps), even one whose top-k did not pick it
        final = {a: (gs[0] if len(gs) == 1 else max((g for g in range(len(gts)) if (g, a) in ious),
                                                    key=lambda g: ious[g, a])) for a, gs in owners.items()}
        for g in picked:
            mine = [a for a, owner in final.items() if owner == g]
            if not mine:
                continue
            max_metric = max(metrics[g, a] for a in mine)
            max_iou = max(ious[g, a] for a in mine)
            for a in mine:
                result_scores[b, a, int(gts[g][1])] = metrics[g, a] * max_iou / (max_metric + 1e-9)
                result_gt[b, a] = g
    return result_gt, result_scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tal_matches_loop_reference_and_invariants(seed):
    anchors, _, pred_boxes, scores, targets = random_case(seed)
    labels, boxes, mask = pad_targets(targets, 2, 3)
    topk = 4
    out = TaskAlignedAssigner(topk, 3, alpha=0.5, beta=6.0, iou_kind="iou")(scores, pred_boxes, anchors, labels, boxes, mask)
    ref_gt, ref_scores = tal_reference(scores, pred_boxes, anchors, targets, topk, 0.5, 6.0, 3)

    assert {(b, a) for b, a in out.fg_mask.nonzero().tolist()} == set(ref_gt)
    for (b, a), g in ref_gt.items():
        assert out.target_gt_idx[b, a].item() == g
    assert torch.allclose(out.target_scores, ref_scores, atol=1e-5)
    for b, a in out.fg_mask.nonzero().tolist():  # positives lie inside their gt and carry its label
        g = out.target_gt_idx[b, a]
        assert inside(anchors[a].tolist(), boxes[b, g].tolist()) and mask[b, g, 0]
        assert out.target_labels[b, a] == labels[b, g, 0]
        assert torch.equal(out.target_boxes[b, a], boxes[b, g])
    for b in range(2):  # top-k respected
        counts = torch.bincount(out.target_gt_idx[b][out.fg_mask[b]], minlength=boxes.shape[1])
        assert (counts <= topk).all()
    assert (out.target_scores.sum(-1)[~out.fg_mask] == 0).all()


def test_tal_ciou_variant_runs_and_no_gt_returns_background():
    anchors, _, pred_boxes, scores, targets = random_case(3)
    labels, boxes, mask = pad_targets(targets, 2, 3)
    out = TaskAlignedAssigner(10, 3)(scores, pred_boxes, anchors, labels, boxes, mask)  # v8 defaults, CIoU
    assert out.fg_mask.any() and (out.target_scores >= 0).all() and (out.target_scores <= 1 + 1e-6).all()
    labels, boxes, mask = pad_targets(torch.zeros(0, 6), 2, 3)
    empty = TaskAlignedAssigner(10, 3)(scores, pred_boxes, anchors, labels, boxes, mask)
    assert not empty.fg_mask.any() and empty.target_scores.eq(0).all() and (empty.target_labels == 3).all()


# ----------------------------------------------------------------------------------------- ATSS
def test_atss_golden_assignment():
    """strides 8/16 on 32 px, anchor boxes of 2*stride (anchor_box_scale=2), topk 3 per level.

    gt0 = [0,0,18,12] (centre 9,6). Level-0 distances^2: anchor1 (12,4) 13, anchor0 (4,4) 29,
    anchor5 (12,12) 45 -> candidates; IoU with their 16x16 boxes: 168/304 = 0.5526, 144/328 = 0.4390,
    112/360 = 0.3111. Level 1 (32x32 boxes): anchor16 (8,8) 216/1024 = 0.2109, anchor17 (24,8)
    120/1120 = 0.1071, anchor18 (8,24) 72/1168 = 0.0616. mean 0.2804, std (n-1) 0.1913 -> threshold 0.4717:
    only anchor 1 passes (and its centre lies inside gt0).
    gt1 = [12,18,32,32] (centre 22,25), mirrored numbers: level 0 anchor14 (20,28) 192/344 = 0.5581,
    anchor10 (20,20) 160/376 = 0.4255, anchor15 (28,28) 144/392 = 0.3673; level 1 anchor19 0.2734,
    anchor18 168/1136 = 0.1479, anchor17 120/1184 = 0.1014; mean 0.3123 + std 0.1728 = 0.4851 -> anchor 14.
    """
    anchors, strides = grid(32, [8, 16])
    targets = torch.tensor([[0, 0, 0, 0, 18, 12], [0, 1, 12, 18, 32, 32]], dtype=torch.float32)
    labels, boxes, mask = pad_targets(targets, 1, 2)
    assigner = ATSSAssigner(topk=3, num_classes=2, anchor_box_scale=2.0)
    out = assigner(anchors, strides, labels, boxes, mask)
    assert out.fg_mask[0].nonzero().flatten().tolist() == [1, 14]
    assert out.target_gt_idx[0, [1, 14]].tolist() == [0, 1]
    assert out.target_labels[0, [1, 14]].tolist() == [0, 1]
    expected = torch.zeros(20, 2)
    expected[1, 0] = expected[14, 1] = 1.0  # one-hot without predicted boxes
    assert torch.equal(out.target_scores[0], expected)
    # with predicted boxes the target score is IoU(pred, gt): anchor 14 predicts [12,18,32,25] -> 140/280
    pred_boxes = torch.tensor([0.0, 0, 18, 12]).repeat(1, 20, 1)
    pred_boxes[0, 14] = torch.tensor([12.0, 18, 32, 25])
    scored = assigner(anchors, strides, labels, boxes, mask, pred_boxes)
    assert scored.target_scores[0, 1, 0].item() == pytest.approx(1.0)
    assert scored.target_scores[0, 14, 1].item() == pytest.approx(0.5)


def atss_reference(anchors, strides, targets, batch, topk, scale):
    """Loop-by-loop ATSS from the paper's description."""
    levels = sorted(set(strides.flatten().tolist()))
    assigned = {}
    for b in range(batch):
        gts = [row[2:] for row in targets.tolist() if int(row[0]) == b]
        positives = {}
        for g, box in enumerate(gts):
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            candidates = []
            for stride in levels:
                level = [a for a in range(len(anchors)) if strides[a, 0].item() == stride]
                level.sort(key=lambda a: (anchors[a, 0] - centre[0]) ** 2 + (anchors[a, 1] - centre[1]) ** 2)
                candidates += level[:topk]
            ious = {}
            for a in candidates:
                half = strides[a, 0].item() * scale / 2
                anchor_box = torch.cat((anchors[a] - half, anchors[a] + half))
                ious[a] = bbox_iou(torch.tensor(box), anchor_box, "iou").item()
            values = list(ious.values())
            threshold = statistics.mean(values) + statistics.stdev(values)
            for a in candidates:
                if ious[a] >= threshold and inside(anchors[a].tolist(), box):
                    positives.setdefault(a, []).append((ious[a], g))
        for a, owners in positives.items():
            if len(owners) == 1:
                assigned[b, a] = owners[0][1]
                continue
            half = strides[a, 0].item() * scale / 2
            anchor_box = torch.cat((anchors[a] - half, anchors[a] + half))
            # several gts: the one of highest anchor-box IoU among all gts (select_highest_overlaps)
            assigned[b, a] = max(range(len(gts)), key=lambda g: bbox_iou(torch.tensor(gts[g]), anchor_box, "iou").item())
    return assigned


@pytest.mark.parametrize("seed", [0, 1])
def test_atss_matches_loop_reference(seed):
    anchors, strides, _, _, targets = random_case(seed, gts=5)
    labels, boxes, mask = pad_targets(targets, 2, 3)
    out = ATSSAssigner(topk=5, num_classes=3)(anchors, strides, labels, boxes, mask)
    reference = atss_reference(anchors, strides, targets, 2, 5, 5.0)
    assert reference, "the random case should produce positives"
    assert {(b, a) for b, a in out.fg_mask.nonzero().tolist()} == set(reference)
    for (b, a), g in reference.items():
        assert out.target_gt_idx[b, a].item() == g


# ----------------------------------------------------------------------------------------- loss pieces
def test_dfl_loss_hand_values():
    logits = torch.randn(1, 4, 16)
    log_probs = logits.log_softmax(-1)
    # integer target k: CE at bin k only; target 2.25: 0.75 CE(2) + 0.25 CE(3)
    target = torch.tensor([[3.0, 0.0, 2.25, 14.99]])
    expected = -torch.stack(
        [
            log_probs[0, 0, 3],
            log_probs[0, 1, 0],
            0.75 * log_probs[0, 2, 2] + 0.25 * log_probs[0, 2, 3],
            0.01 * log_probs[0, 3, 14] + 0.99 * log_probs[0, 3, 15],
        ]
    ).mean()
    assert dfl_loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-5)


def test_varifocal_loss_hand_values():
    # logit 0 -> p = 0.5, BCE(0.5, q) = ln 2 for any q
    # negative (y=0, q=0): w = 0.75 * 0.5^2 = 0.1875; positive (y=1, q=0.8): w = q = 0.8
    logits = torch.zeros(1, 2)
    target_scores = torch.tensor([[0.0, 0.8]])
    one_hot = torch.tensor([[0.0, 1.0]])
    assert varifocal_loss(logits, target_scores, one_hot).item() == pytest.approx((0.1875 + 0.8) * LN2, abs=1e-6)


# ----------------------------------------------------------------------------------------- losses
NC = 2


def perfect_raw(anchors, strides, gt_box, bins):
    """Every anchor predicts ``gt_box`` exactly (sides clamped at 0 outside it); DFL logits put equal
    mass on the two bins around each (half-integer) distance; class logits 0 (p = 0.5)."""
    ltrb = bbox2dist(anchors / strides, gt_box / strides).clamp(0, max(bins - 1, 1) if bins else None)
    if bins:
        logits = torch.full((*ltrb.shape, bins), -1e4)
        left = ltrb.floor().long().clamp(max=bins - 2)
        logits.scatter_(-1, left[..., None], 0.0)
        logits.scatter_(-1, left[..., None] + 1, 0.0)
        box = logits.flatten(-2)[None]
    else:
        box = ltrb[None]
    return {"cls": torch.zeros(1, len(anchors), NC), "box": box, "anchors": anchors, "strides": strides, "bins": bins}


def test_yolov8_loss_golden_perfect_boxes():
    """gt [32,0,64,32] on 64 px: every anchor inside it has half-integer ltrb in stride units (21 anchors).

    All inside anchors tie in metric (same score 0.5, IoU 1) -> top-10 positives, each with soft target 1,
    so sum(target_scores) = 10.  box: 1 - CIoU = 0.  dfl: 0.5 CE + 0.5 CE on a 50/50 pair = ln 2 per anchor
    -> 1.5 * ln 2.  cls: BCE(logit 0, y) = ln 2 for every entry -> 0.5 * (84 anchors * 2 classes) ln 2 / 10.
    total = (box + cls + dfl) * batch_size (1).
    """
    anchors, strides = grid(64, [8, 16, 32])
    gt_box = torch.tensor([32.0, 0, 64, 32])
    raw = perfect_raw(anchors, strides, gt_box, bins=16)
    total, parts = YOLOv8Loss(NC)(raw, torch.tensor([[0.0, 1, 32, 0, 64, 32]]))
    assert parts["box"].item() == pytest.approx(0.0, abs=1e-5)
    assert parts["dfl"].item() == pytest.approx(1.5 * LN2, abs=1e-5)
    assert parts["cls"].item() == pytest.approx(0.5 * 84 * NC * LN2 / 10, abs=1e-4)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), abs=1e-4)


@pytest.mark.parametrize("bins,iou_type", [(17, "giou"), (0, "siou")])
def test_yolov6_loss_golden_perfect_boxes(bins, iou_type):
    """Same set-up, YOLOv6 TAL (topk 13): 13 positives with target 1, sum 13 (> 1, so it divides).
    VFL at p = 0.5: positives w = 1, negatives w = 0.75 * 0.25, BCE = ln 2 everywhere
    -> cls = ln 2 * (13 + 0.1875 * (84*2 - 13)) / 13; box = 0; dfl = 0.5 ln 2 with bins, else 0."""
    anchors, strides = grid(64, [8, 16, 32])
    raw = perfect_raw(anchors, strides, torch.tensor([32.0, 0, 64, 32]), bins=bins)
    total, parts = YOLOv6Loss(NC, bins=bins, iou_type=iou_type)(raw, torch.tensor([[0.0, 1, 32, 0, 64, 32]]))
    assert parts["box"].item() == pytest.approx(0.0, abs=1e-5)
    assert parts["dfl"].item() == pytest.approx(0.5 * LN2 if bins else 0.0, abs=1e-5)
    assert parts["cls"].item() == pytest.approx(LN2 * (13 + 0.1875 * (84 * NC - 13)) / 13, abs=1e-4)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), abs=1e-4)  # not batch-scaled


def learnable_raw(anchors, strides, bins, batch=1):
    cls = torch.nn.Parameter(torch.full((batch, len(anchors), NC), -4.0))
    box = torch.nn.Parameter(torch.zeros(batch, len(anchors), 4 * bins) if bins else torch.full((batch, len(anchors), 4), 2.0))
    return cls, box


LOSSES = {
    "v8": (lambda: YOLOv8Loss(NC), 16),
    "v6n_siou": (lambda: YOLOv6Loss(NC, bins=0, iou_type="siou"), 0),
    "v6m_giou_dfl": (lambda: YOLOv6Loss(NC, bins=17, iou_type="giou"), 17),
    "v6_atss_warmup": (lambda: YOLOv6Loss(NC, bins=0, iou_type="giou", atss_warmup_epochs=1000), 0),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_overfits_single_batch(name):
    """A learnable raw dict (no network) trained on one image: the loss falls and the top detections
    land on the two gts with the right classes."""
    make_loss, bins = LOSSES[name]
    loss_fn = make_loss()
    torch.manual_seed(0)
    anchors, strides = grid(64, [8, 16, 32])
    targets = torch.tensor([[0, 0, 8, 8, 40, 30], [0, 1, 36, 20, 60, 60]], dtype=torch.float32)
    cls, box = learnable_raw(anchors, strides, bins)
    optimizer = torch.optim.Adam([cls, box], lr=0.1)
    history = []
    for _ in range(100):
        raw = {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": bins}
        total, parts = loss_fn(raw, targets, epoch=0)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.5 * history[0]
    detections = postprocess(raw, conf=0.25, iou=0.5)[0]
    for gt in targets:
        best = box_iou(gt[None, 2:], detections["boxes"]).max(1)
        assert best.values.item() > 0.8
        assert detections["labels"][best.indices].item() == int(gt[1])


@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_gt_batch_pushes_scores_down(name):
    make_loss, bins = LOSSES[name]
    anchors, strides = grid(64, [8, 16, 32])
    cls, box = learnable_raw(anchors, strides, bins, batch=2)
    cls.data.normal_()
    raw = {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": bins}
    total, parts = make_loss()(raw, torch.zeros(0, 6), epoch=0)
    assert torch.isfinite(total) and total.item() > 0
    assert parts["box"].item() == 0 and parts["dfl"].item() == 0
    total.backward()
    assert (cls.grad > 0).all()  # gradient descent lowers every score
    assert box.grad is not None and torch.isfinite(box.grad).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_image_without_gts_in_batch(name):
    make_loss, bins = LOSSES[name]
    anchors, strides = grid(64, [8, 16, 32])
    cls, box = learnable_raw(anchors, strides, bins, batch=2)
    raw = {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": bins}
    targets = torch.tensor([[1, 1, 8, 8, 40, 30]], dtype=torch.float32)  # only image 1 has a gt
    total, parts = make_loss()(raw, targets, epoch=0)
    total.backward()
    assert torch.isfinite(total) and parts["box"].item() > 0
    assert (cls.grad[0] > 0).all()  # image 0 is all background
    assert box.grad[0].abs().sum() == 0 and box.grad[1].abs().sum() > 0


def test_yolov8_loss_scales_by_batch_size():
    anchors, strides = grid(64, [8, 16, 32])
    cls, box = learnable_raw(anchors, strides, 16, batch=3)
    raw = {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": 16}
    targets = torch.tensor([[0, 0, 8, 8, 40, 30], [2, 1, 36, 20, 60, 60]], dtype=torch.float32)
    total, parts = YOLOv8Loss(NC)(raw, targets)
    assert total.item() == pytest.approx(3 * sum(p.item() for p in parts.values()), rel=1e-5)
    unscaled, _ = YOLOv8Loss(NC, scale_by_batch_size=False)(raw, targets)
    assert unscaled.item() == pytest.approx(total.item() / 3, rel=1e-5)


def test_yolov6_uses_atss_only_during_warmup():
    loss_fn = YOLOv6Loss(NC, bins=0, atss_warmup_epochs=2)
    calls = []
    for name in ("atss", "tal"):
        assigner = getattr(loss_fn, name)
        setattr(loss_fn, name, lambda *args, _a=assigner, _n=name: calls.append(_n) or _a(*args))
    anchors, strides = grid(64, [8, 16, 32])
    cls, box = learnable_raw(anchors, strides, 0)
    raw = {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": 0}
    targets = torch.tensor([[0, 0, 8, 8, 40, 30]], dtype=torch.float32)
    for epoch in (0, 1, 2, None):
        loss_fn(raw, targets, epoch=epoch)
    assert calls == ["atss", "atss", "tal", "tal"]


def test_loss_input_errors():
    anchors, strides = grid(64, [8, 16, 32])
    cls, box = learnable_raw(anchors, strides, 16)
    raw = {"cls": cls, "box": box, "anchors": anchors, "strides": strides, "bins": 16}
    with pytest.raises(ValueError, match="bins"):
        YOLOv6Loss(NC, bins=17)(raw, torch.zeros(0, 6))
    with pytest.raises(ValueError, match="classes"):
        YOLOv8Loss(5)(raw, torch.zeros(0, 6))
    with pytest.raises(ValueError, match="num_classes=2"):
        YOLOv8Loss(NC)(raw, torch.tensor([[0.0, 7, 0, 0, 9, 9]]))
    with pytest.raises(ValueError, match="iou_type"):
        YOLOv6Loss(NC, iou_type="eiou")
