"""Anchor geometry, DFL decoding, post-processing (ops.py) and the IoU family (iou.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from fgkd.models.detectors.iou import IOU_KINDS, bbox_iou
from fgkd.models.detectors.ops import (
    bbox2dist,
    check_raw,
    decode_boxes,
    dfl_decode,
    dist2bbox,
    make_anchors,
    postprocess,
)


def feats_for(size: int, strides: list[int]) -> list[torch.Tensor]:
    return [torch.zeros(2, 3, size // s, size // s) for s in strides]


# ----------------------------------------------------------------------------------------- anchors
def test_make_anchors_centres_order_and_strides():
    anchors, strides = make_anchors(feats_for(32, [8, 16]), [8, 16])
    assert anchors.shape == (16 + 4, 2) and strides.shape == (20, 1)
    # level 0 (stride 8, 4x4): (i + 0.5) * 8, row-major: x varies fastest
    assert anchors[0].tolist() == [4.0, 4.0]
    assert anchors[1].tolist() == [12.0, 4.0]
    assert anchors[4].tolist() == [4.0, 12.0]
    assert anchors[15].tolist() == [28.0, 28.0]
    # level 1 (stride 16, 2x2)
    assert anchors[16].tolist() == [8.0, 8.0]
    assert anchors[19].tolist() == [24.0, 24.0]
    assert strides[:16].eq(8).all() and strides[16:].eq(16).all()


def test_make_anchors_non_square_and_mismatch():
    anchors, _ = make_anchors([torch.zeros(1, 1, 2, 3)], [8])  # H=2, W=3
    assert anchors.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    with pytest.raises(ValueError, match="strides"):
        make_anchors([torch.zeros(1, 1, 2, 2)], [8, 16])


def test_dist2bbox_bbox2dist_round_trip_and_clamp():
    torch.manual_seed(0)
    anchors = torch.rand(50, 2) * 100
    ltrb = torch.rand(3, 50, 4) * 20
    boxes = dist2bbox(ltrb, anchors)
    assert torch.allclose(bbox2dist(anchors, boxes), ltrb, atol=1e-5)
    # hand example: anchor (10, 20), ltrb (1, 2, 3, 4) -> x1 9, y1 18, x2 13, y2 24
    assert dist2bbox(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20])).tolist() == [9, 18, 13, 24]
    # clamping: a side outside the box (negative) -> 0, a far side -> max_dist
    clamped = bbox2dist(torch.tensor([10.0, 20]), torch.tensor([11.0, 0, 40, 21]), max_dist=14.99)
    assert torch.allclose(clamped, torch.tensor([0.0, 20, 30, 1]).clamp(0, 14.99))


# ----------------------------------------------------------------------------------------- DFL
@pytest.mark.parametrize("bins", [16, 17])
def test_dfl_decode_one_hot_gives_exact_integer(bins):
    sides = torch.tensor([0, 3, bins - 1, 7])
    logits = torch.full((4, bins), -1e4)
    logits[torch.arange(4), sides] = 1e4
    decoded = dfl_decode(logits.reshape(1, 4 * bins), bins)
    assert decoded.tolist() == [sides.float().tolist()]  # exact, not approximately


def test_dfl_decode_uniform_and_two_bin_mix():
    bins = 16
    assert torch.allclose(dfl_decode(torch.zeros(2, 4 * bins), bins), torch.full((2, 4), 7.5))
    logits = torch.full((4, bins), -1e4)
    logits[:, 2] = logits[:, 3] = 0.0  # equal mass on bins 2 and 3 -> 2.5
    assert torch.allclose(dfl_decode(logits.reshape(1, -1), bins), torch.full((1, 4), 2.5))


def raw_from_ltrb(ltrb: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor, cls: torch.Tensor) -> dict:
    return {"cls": cls, "box": ltrb, "anchors": anchors, "strides": strides, "bins": 0}


def test_decode_boxes_plain_and_dfl():
    anchors, strides = make_anchors(feats_for(32, [8, 16]), [8, 16])
    ltrb = torch.ones(1, 20, 4)  # one stride unit on every side
    boxes = decode_boxes(raw_from_ltrb(ltrb, anchors, strides, torch.zeros(1, 20, 2)))
    assert boxes[0, 0].tolist() == [-4, -4, 12, 12]  # anchor (4,4), stride 8
    assert boxes[0, 16].tolist() == [-8, -8, 24, 24]  # anchor (8,8), stride 16
    bins = 16
    logits = torch.full((1, 20, 4, bins), -1e4)
    logits[..., 2] = 1e4  # every side exactly 2 stride units
    raw = {"cls": torch.zeros(1, 20, 2), "box": logits.flatten(2), "anchors": anchors, "strides": strides, "bins": bins}
    boxes = decode_boxes(raw)
    assert boxes[0, 0].tolist() == [-12, -12, 20, 20]
    assert boxes[0, 19].tolist() == [-8, -8, 56, 56]


def test_check_raw_errors_name_the_key():
    anchors, strides = make_anchors(feats_for(32, [8, 16]), [8, 16])
    raw = {"cls": torch.zeros(1, 20, 2), "box": torch.zeros(1, 20, 60), "anchors": anchors, "strides": strides, "bins": 16}
    with pytest.raises(ValueError, match="bins=16"):
        check_raw(raw)
    with pytest.raises(KeyError, match="strides"):
        check_raw({k: v for k, v in raw.items() if k != "strides"})


# ----------------------------------------------------------------------------------------- postprocess
def make_raw(boxes_xyxy: torch.Tensor, scores: torch.Tensor) -> dict:
    """A raw output whose decoded boxes are exactly ``boxes_xyxy [A,4]`` (stride 1, anchor = box centre)
    and whose sigmoid scores are ``scores [A,nc]``."""
    anchors = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
    ltrb = bbox2dist(anchors, boxes_xyxy)
    logits = torch.logit(scores)
    return raw_from_ltrb(ltrb[None], anchors, torch.ones(len(anchors), 1), logits[None])


def test_postprocess_keeps_higher_scoring_of_overlapping_pair():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]])  # IoU(0,1) = 81/119 = 0.68
    scores = torch.tensor([[0.6, 0.01], [0.9, 0.01], [0.01, 0.5]])
    out = postprocess(make_raw(boxes, scores), conf=0.25, iou=0.5)[0]
    assert out["labels"].tolist() == [0, 1]
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.5]))
    assert torch.allclose(out["boxes"], boxes[[1, 2]], atol=1e-5)
    # IoU threshold above the pair's IoU keeps both
    assert len(postprocess(make_raw(boxes, scores), conf=0.25, iou=0.7)[0]["boxes"]) == 3


def test_postprocess_class_wise_agnostic_multilabel_conf():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])
    scores = torch.tensor([[0.8, 0.3], [0.2, 0.9]])  # best classes differ -> class-wise NMS keeps both
    raw = make_raw(boxes, scores)
    assert sorted(postprocess(raw, conf=0.25, iou=0.5)[0]["labels"].tolist()) == [0, 1]
    agnostic = postprocess(raw, conf=0.25, iou=0.5, agnostic=True)[0]
    assert agnostic["labels"].tolist() == [1] and torch.allclose(agnostic["scores"], torch.tensor([0.9]))
    multi = postprocess(raw, conf=0.25, iou=0.5, multi_label=True)[0]
    # (box0, cls0) 0.8 and (box1, cls1) 0.9 survive; (box0, cls1) 0.3 is suppressed by (box1, cls1)
    assert sorted(zip(multi["labels"].tolist(), multi["scores"].tolist(), strict=False)) == [(0, pytest.approx(0.8)), (1, pytest.approx(0.9))]
    assert len(postprocess(raw, conf=0.95)[0]["boxes"]) == 0


def test_postprocess_max_det_and_batch():
    torch.manual_seed(0)
    xy = torch.rand(200, 2) * 1000
    boxes = torch.cat((xy, xy + 3), 1)  # tiny, mostly disjoint boxes
    scores = torch.rand(200, 3) * 0.9 + 0.05
    raw = make_raw(boxes, scores)
    raw = {**raw, "cls": raw["cls"].repeat(2, 1, 1), "box": raw["box"].repeat(2, 1, 1)}
    out = postprocess(raw, conf=0.01, iou=0.7, max_det=50)
    assert len(out) == 2 and all(len(o["boxes"]) == 50 for o in out)
    assert (out[0]["scores"][:-1] >= out[0]["scores"][1:]).all()  # sorted by score
    assert out[0]["labels"].dtype == torch.int64
    ref = torchvision.ops.batched_nms(boxes, scores.max(1).values, scores.argmax(1), 0.7)[:50]
    assert torch.allclose(out[0]["scores"], scores.max(1).values[ref], atol=1e-5)
    assert len(postprocess(raw, conf=0.01, max_det=300, max_nms=20)[0]["boxes"]) <= 20


# ----------------------------------------------------------------------------------------- IoU family
E = 1e-5
B1 = torch.tensor([0.0, 0, 2, 2])


def test_iou_pair_a_offset_squares():
    # b1 = [0,0,2,2], b2 = [1,1,3,3]: inter 1, union 4+4-1 = 7 -> IoU 1/7
    # enclosing box [0,0,3,3]: area 9 -> GIoU = 1/7 - (9-7)/9 = -5/63
    # centres (1,1),(2,2): rho^2 = 2, enclosing diagonal^2 = 18 -> DIoU = 1/7 - 1/9 = 2/63
    # same aspect ratio -> v = 0 -> CIoU = DIoU
    # SIoU: dx = dy = 1 -> angle a = pi/4, Lambda = 1 - 2 sin^2(pi/4 - pi/4) = 1, gamma = 2 - 1 = 1;
    #   rho_x = rho_y = (1/3)^2 -> Delta = 2 - 2 exp(-1/9); same shape -> Omega = 0;
    #   SIoU = 1/7 - Delta/2 = 1/7 - 1 + exp(-1/9)
    b2 = torch.tensor([1.0, 1, 3, 3])
    expected = {"iou": 1 / 7, "giou": -5 / 63, "diou": 2 / 63, "ciou": 2 / 63, "siou": 1 / 7 - 1 + math.exp(-1 / 9)}
    for kind, value in expected.items():
        assert bbox_iou(B1, b2, kind).item() == pytest.approx(value, abs=E), kind


def test_iou_pair_b_nested_boxes_different_aspect():
    # b1 = [0,0,4,2] (w4 h2), b2 = [0,0,2,2]: inter 4, union 8 -> IoU 0.5; enclosing = b1 (area 8) -> GIoU 0.5
    # centres (2,1),(1,1): rho^2 = 1, diagonal^2 = 16+4 = 20 -> DIoU = 0.5 - 0.05 = 0.45
    # v = 4/pi^2 (atan(2/2) - atan(4/2))^2 = 4/pi^2 (pi/4 - atan 2)^2 ~= 0.0419564
    # alpha = v / (1 - IoU + v) ~= 0.0774165 -> CIoU = 0.45 - alpha v ~= 0.4467519
    # SIoU: dy = 0 -> Lambda = 0, gamma = 2; rho_x = (1/4)^2, rho_y = 0 -> Delta = 1 - exp(-2/16);
    #   omega_w = |4-2|/4 = 0.5, omega_h = 0 -> Omega = (1 - exp(-0.5))^4; SIoU = 0.5 - (Delta + Omega)/2 ~= 0.42926
    b1, b2 = torch.tensor([0.0, 0, 4, 2]), torch.tensor([0.0, 0, 2, 2])
    v = 4 / math.pi**2 * (math.pi / 4 - math.atan(2)) ** 2
    alpha = v / (1 - 0.5 + v)
    siou = 0.5 - ((1 - math.exp(-2 / 16)) + (1 - math.exp(-0.5)) ** 4) / 2
    expected = {"iou": 0.5, "giou": 0.5, "diou": 0.45, "ciou": 0.45 - alpha * v, "siou": siou}
    assert expected["ciou"] == pytest.approx(0.4467519, abs=1e-6)
    assert expected["siou"] == pytest.approx(0.4292641, abs=1e-6)
    for kind, value in expected.items():
        assert bbox_iou(b1, b2, kind).item() == pytest.approx(value, abs=E), kind
        assert bbox_iou(b2, b1, kind).item() == pytest.approx(value, abs=E), kind  # symmetric


def test_iou_pair_c_disjoint_and_oblique_siou():
    # b1 = [0,0,1,1], b2 = [2,0,3,1]: IoU 0; enclosing [0,0,3,1] area 3, union 2 -> GIoU -1/3
    # centres 2 apart: rho^2 = 4, diagonal^2 = 9 + 1 = 10 -> DIoU = CIoU = -0.4
    # SIoU: Lambda = 0, gamma = 2, rho_x = (2/3)^2 -> SIoU = -(1 - exp(-8/9))/2
    b1, b2 = torch.tensor([0.0, 0, 1, 1]), torch.tensor([2.0, 0, 3, 1])
    expected = {"iou": 0.0, "giou": -1 / 3, "diou": -0.4, "ciou": -0.4, "siou": -(1 - math.exp(-8 / 9)) / 2}
    for kind, value in expected.items():
        assert bbox_iou(b1, b2, kind).item() == pytest.approx(value, abs=E), kind
    # oblique centres, paper's arcsin form of the angle cost: b1 = [0,0,2,2] (centre 1,1), b2 = [2,1,4,3]
    # (centre 3,2): dx 2, dy 1, sin a = 1/sqrt 5 -> Lambda = 1 - 2 sin^2(asin(1/sqrt5) - pi/4) = 0.8,
    # gamma = 1.2; enclosing [0,0,4,3] -> rho_x = (2/4)^2, rho_y = (1/3)^2; no overlap, same shape
    lam = 1 - 2 * math.sin(math.asin(1 / math.sqrt(5)) - math.pi / 4) ** 2
    assert lam == pytest.approx(0.8)
    gamma = 2 - lam
    siou = -(2 - math.exp(-gamma * 0.25) - math.exp(-gamma / 9)) / 2
    assert bbox_iou(B1, torch.tensor([2.0, 1, 4, 3]), "siou").item() == pytest.approx(siou, abs=E)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_iou_identical_boxes_is_one_and_broadcasts(kind):
    boxes = torch.tensor([[0.0, 0, 5, 3], [2, 2, 9, 4]])
    assert torch.allclose(bbox_iou(boxes, boxes, kind), torch.ones(2), atol=1e-5)
    out = bbox_iou(boxes[:, None, :], boxes[None, :, :], kind)  # [2, 1, 4] vs [1, 2, 4] -> [2, 2]
    assert out.shape == (2, 2)


def test_iou_variants_match_torchvision_on_random_boxes():
    torch.manual_seed(0)
    xy = torch.rand(2, 64, 2) * 50
    boxes = torch.cat((xy, xy + torch.rand(2, 64, 2) * 40 + 1), -1)
    a, b = boxes[0], boxes[1]
    pairs = {
        "iou": torchvision.ops.box_iou,
        "giou": torchvision.ops.generalized_box_iou,
        "diou": torchvision.ops.distance_box_iou,
        "ciou": torchvision.ops.complete_box_iou,
    }
    for kind, reference in pairs.items():
        assert torch.allclose(bbox_iou(a, b, kind), reference(a, b).diagonal(), atol=1e-4), kind
        assert torch.allclose(bbox_iou(a[:, None], b[None], kind), reference(a, b), atol=1e-4), kind


def test_siou_bounded_by_iou_and_finite_gradients_for_coincident_centres():
    torch.manual_seed(1)
    xy = torch.rand(2, 100, 2) * 50
    boxes = torch.cat((xy, xy + torch.rand(2, 100, 2) * 40 + 1), -1)
    assert (bbox_iou(boxes[0], boxes[1], "siou") <= bbox_iou(boxes[0], boxes[1], "iou") + 1e-6).all()
    pred = torch.tensor([[1.0, 1, 3, 3]], requires_grad=True)  # same centre as the target, other size
    for kind in IOU_KINDS:
        (1 - bbox_iou(pred, torch.tensor([[0.0, 0, 4, 4]]), kind)).sum().backward()
        assert torch.isfinite(pred.grad).all(), kind
        pred.grad = None


def test_iou_unknown_kind():
    with pytest.raises(ValueError, match="siou"):
        bbox_iou(B1, B1, "eiou")
