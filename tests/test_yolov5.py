"""YOLOv5 v7.0 (anchor-based): parameter parity with the reference counts, decoding, target building and loss
golden values, learning, and the whole pipeline (KD, export)."""

from __future__ import annotations

import math

import pytest
import torch

from fgkd.models.detectors.base import build_detector
from fgkd.models.detectors.yolov5 import ANCHORS, YOLOv5
from fgkd.models.detectors.yolov5_loss import BALANCE, YOLOv5Loss, build_targets

# param_counts.md "YOLOv5 (v7.0, anchor-based)": DetectionModel("models/yolov5X.yaml", ch=3, nc=nc), train mode
# and after model.fuse(); backbone = layers 0-9
REFERENCE = {
    ("n", 80): (1_872_157, 1_867_405), ("s", 80): (7_235_389, 7_225_885), ("m", 80): (21_190_557, 21_172_173),
    ("l", 80): (46_563_709, 46_533_693), ("n", 1): (1_765_270, 1_760_518), ("s", 1): (7_022_326, 7_012_822),
    ("m", 1): (20_871_318, 20_852_934), ("l", 1): (46_138_294, 46_108_278),
}
BACKBONE = {"n": 1_046_368, "s": 4_171_456, "m": 12_167_904, "l": 26_582_912}
TAP_CHANNELS = {"n": (64, 128, 256), "s": (128, 256, 512), "m": (192, 384, 768), "l": (256, 512, 1024)}


@pytest.mark.parametrize("scale,nc", list(REFERENCE))
def test_parameter_counts_equal_the_reference(scale, nc):
    model = build_detector(f"yolov5{scale}", nc)
    train, deploy = REFERENCE[(scale, nc)]
    assert sum(p.numel() for p in model.parameters()) == train
    assert all(p.requires_grad for p in model.parameters())  # anchors are buffers, not parameters
    assert sum(p.numel() for p in model.backbone.parameters()) == BACKBONE[scale]
    assert [model.taps[f"backbone.p{i}"].channels for i in (3, 4, 5)] == list(TAP_CHANNELS[scale])
    assert [model.taps[f"neck.p{i}"].channels for i in (3, 4, 5)] == list(TAP_CHANNELS[scale])
    if scale in ("n", "s"):  # fusing folds BN into biased convs: the reference deploy counts
        assert sum(p.numel() for p in model.fuse().parameters()) == deploy


def test_fused_model_gives_the_same_outputs_and_shapes_follow_the_strides():
    torch.manual_seed(0)
    model = YOLOv5(3, "n").eval()
    images = torch.rand(2, 3, 128, 96)
    with torch.no_grad():
        raw = model(images)
        boxes, scores = model.decode(raw)
        assert [tuple(level.shape) for level in raw["levels"]] == [(2, 3, 16, 12, 8), (2, 3, 8, 6, 8), (2, 3, 4, 3, 8)]
        assert boxes.shape == (2, 3 * (16 * 12 + 8 * 6 + 4 * 3), 4) and scores.shape[-1] == 3
        fused_boxes, fused_scores = model.fuse().decode(model(images))
    torch.testing.assert_close(fused_boxes, boxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(fused_scores, scores, atol=1e-5, rtol=1e-4)


def test_decoding_of_zero_logits_is_the_anchor_box_at_the_cell_centre():
    model = YOLOv5(2, "n")
    levels = [torch.zeros(1, 3, 64 // s, 64 // s, 7) for s in (8, 16, 32)]
    boxes, scores = model.decode({"levels": levels, "anchors": model.head.anchors, "strides": (8, 16, 32)})
    # first cell of P3, anchor 0 (10 x 13 px): centre (2·0.5 − 0.5 + 0) · 8 = 4, wh = (2·0.5)² · anchor
    torch.testing.assert_close(boxes[0, 0], torch.tensor([4 - 5.0, 4 - 6.5, 4 + 5.0, 4 + 6.5]))
    # P4 starts after 3·8·8 P3 predictions; its cell (1, 0) of anchor 1 (62 x 45) is centred at x = 1.5·16
    p4 = 3 * 8 * 8 + 1 * 4 * 4 + 0 * 4 + 1
    torch.testing.assert_close(boxes[0, p4], torch.tensor([24 - 31.0, 8 - 22.5, 24 + 31.0, 8 + 22.5]))
    assert torch.allclose(scores, torch.full_like(scores, 0.25))  # σ(0) · σ(0)


def test_target_builder_matches_anchors_by_ratio_and_adds_the_near_neighbour_cells():
    # a 16 x 16 px box centred at (19, 27) on the stride-8 level of a 64 px image: grid centre (2.375, 3.375),
    # nearer the left and the upper neighbour (fraction < 0.5, not on the border), so cells (2,3), (1,3), (2,2);
    # every anchor matches (side ratios 1.6/1.23, 1/1.875, 2.06/1.44 all < 4): 3 cells x 3 anchors
    pos = build_targets(torch.tensor([[0, 1, 11.0, 19.0, 27.0, 35.0]]), torch.tensor(ANCHORS[0]), 8, (8, 8))
    assert sorted(zip(pos["gi"].tolist(), pos["gj"].tolist(), pos["anchor"].tolist(), strict=True)) == sorted(
        (gi, gj, a) for gi, gj in ((2, 3), (1, 3), (2, 2)) for a in range(3))
    offsets = {(gi, gj): tuple(box[:2].tolist()) for gi, gj, box in zip(pos["gi"].tolist(), pos["gj"].tolist(), pos["box"], strict=True)}
    assert offsets == {(2, 3): (0.375, 0.375), (1, 3): (1.375, 0.375), (2, 2): (0.375, 1.375)}
    assert torch.all(pos["box"][:, 2:] == 2.0) and torch.all(pos["cls"] == 1)
    # a 200 x 8 px box (25 x 1 cells): no P3 anchor within anchor_t 4 (the widest, 4.1 cells, is 6x narrower)
    assert build_targets(torch.tensor([[0, 0, 0.0, 0.0, 200.0, 8.0]]), torch.tensor(ANCHORS[0]), 8, (8, 8))["image"].numel() == 0


def test_loss_golden_values_without_targets_and_with_exact_predictions():
    model = YOLOv5(3, "n")
    shapes = [(2, 3, 8, 8, 8), (2, 3, 4, 4, 8), (2, 3, 2, 2, 8)]
    raw = {"levels": [torch.zeros(s) for s in shapes], "anchors": model.head.anchors, "strides": (8, 16, 32),
           "imgsz": (64, 64)}
    criterion = YOLOv5Loss(3)
    total, parts = criterion(raw, torch.zeros(0, 6))
    obj_gain = (64 / 640) ** 2  # hyp obj 1.0 x (imgsz / 640)^2
    assert parts["box"] == 0 and parts["cls"] == 0
    assert parts["obj"].item() == pytest.approx(obj_gain * math.log(2) * sum(BALANCE), rel=1e-6)
    assert total.item() == pytest.approx(2 * parts["obj"].item(), rel=1e-6)  # x batch size

    # logits that predict the target box exactly at every positive of every level: CIoU 1 (no box loss),
    # objectness target 1 there
    target = torch.tensor([[0, 1, 11.0, 19.0, 27.0, 35.0]])
    logit = torch.logit
    counts = []
    for i, (shape, stride) in enumerate(zip(shapes, (8, 16, 32), strict=True)):
        pos = build_targets(target, model.head.anchors[i], stride, shape[2:4])
        at = (pos["image"], pos["anchor"], pos["gj"], pos["gi"])
        level = torch.zeros(shape)
        level[at + (slice(0, 2),)] = logit((pos["box"][:, :2] + 0.5) / 2)
        level[at + (slice(2, 4),)] = logit(torch.sqrt(pos["box"][:, 2:] / pos["anchor_wh"]) / 2)
        level[at + (4,)] = 3.0
        level[at + (slice(5, 8),)] = torch.tensor([-2.0, 2.0, -2.0])
        raw["levels"][i] = level
        counts.append(len({tuple(x) for x in torch.stack(at, 1).tolist()}))
    total, parts = criterion(raw, target)
    assert parts["box"].item() == pytest.approx(0.0, abs=1e-5)
    expected_obj = 0.0
    for (n, shape), balance in zip(zip(counts, shapes, strict=True), BALANCE, strict=True):
        cells = shape[0] * shape[1] * shape[2] * shape[3]
        expected_obj += balance * (n * math.log1p(math.exp(-3.0)) + (cells - n) * math.log(2)) / cells
    assert counts[0] == 9 and parts["obj"].item() == pytest.approx(obj_gain * expected_obj, rel=1e-5)
    levels_with_positives = sum(1 for n in counts if n)
    bce_cls = math.log1p(math.exp(-2.0))  # one-hot (0, 1, 0) against logits (-2, 2, -2): each term the same
    assert parts["cls"].item() == pytest.approx(0.5 * 3 / 80 * bce_cls * levels_with_positives, rel=1e-5)


def test_yolov5_learns_one_batch():
    torch.manual_seed(0)
    model = YOLOv5(2, "n").train()
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 8.0, 8.0, 40.0, 30.0], [1, 1, 20.0, 24.0, 52.0, 60.0]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(40):
        total, _ = model.loss(model(images), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.6 * losses[0]


def test_yolov5_through_the_fakd_pipeline(compose_train, tmp_path):
    from fgkd.engine import read_metrics
    from fgkd.pipeline import run

    cfg = compose_train("model=yolov5n", "method=proposed_rb_sf", "imgsz=64", "epochs=1", "batch_size=2",
                        "num_workers=0", "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
                        "trainer.limit_train_batches=2", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    result = run(cfg)
    payload = read_metrics(result.metrics_path)
    assert payload["run"]["model"] == "yolov5n" and payload["teacher"]["run"]["model"] == "yolov5n"
    assert all(math.isfinite(r["train/kd"]) for r in payload["history"])
