"""RT-DETR (r18 / r50 / l): parameter parity with the references, golden values of the matcher, the varifocal
loss, the denoising queries and the anchors, NMS-free selection, fusion, learning, and the whole FAKD pipeline."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from fgkd.models.detectors.base import build_detector
from fgkd.models.detectors.ops import select_top_queries
from fgkd.models.detectors.rtdetr.criterion import RTDETRCriterion, hungarian_match, varifocal_loss
from fgkd.models.detectors.rtdetr.decoder import generate_anchors, multi_scale_deformable_attention
from fgkd.models.detectors.rtdetr.denoising import denoising_queries
from fgkd.models.detectors.rtdetr.encoder import sincos_position_embedding


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- parameter parity -------------------------------------------------------------------------------------------
def test_rtdetr_l_equals_ultralytics_parameter_for_parameter():
    # Ultralytics 8.2.0 RTDETRDetectionModel("rtdetr-l.yaml"), measured in its own environment (never a dependency):
    # 32,970,476 parameters at nc = 80 and 32,808,131 at nc = 1; per layer L0 HGStem 25,248, L1 HGBlock 155,072,
    # L2 DWConv 1,408, L3 839,296, L5 1,695,360, L6/L7 2,055,808, L9 6,708,480, L11 AIFI 789,760, RepC3 2,232,320,
    # decoder 7,303,907 at nc = 1. The RT-DETR paper (Table 2) lists RT-DETR-L as 32 M.
    model = build_detector("rtdetr_l", 80)
    assert _count(model) == model.num_trainable_parameters() == 32_970_476
    layers = model.backbone.layers
    assert [_count(layers[i]) for i in (0, 1, 2, 3, 5, 6, 7, 9)] == [25_248, 155_072, 1_408, 839_296, 1_695_360,
                                                                   2_055_808, 2_055_808, 6_708_480]
    assert _count(model.encoder.aifi) == 789_760
    assert {_count(b) for b in [*model.encoder.fpn_blocks, *model.encoder.pan_blocks]} == {2_232_320}
    assert _count(build_detector("rtdetr_l", 1)) == 32_808_131
    assert _count(build_detector("rtdetr_l", 1).decoder) == 7_303_907


@pytest.mark.parametrize("name,paper_millions", [("rtdetr_r18", 20), ("rtdetr_r50", 42)])
def test_resnet_variants_match_the_papers_parameter_counts(name, paper_millions):
    # The RT-DETR paper (Zhao et al., CVPR 2024, Table 2) truncates: RT-DETR-L's exact 32.97 M is printed "32 M".
    model = build_detector(name, 80)
    assert math.floor(_count(model) / 1e6) == paper_millions
    if name == "rtdetr_r50":  # official r50: frozen stem (freeze_at 0) and frozen BatchNorm (buffers, not parameters)
        assert _count(model.backbone.stem) == 28_512 and not any(p.requires_grad for p in model.backbone.stem.parameters())
        assert model.num_trainable_parameters() == _count(model) - 28_512
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    else:
        assert len(model.decoder.layers) == 3 and model.num_trainable_parameters() == _count(model)


def test_denoising_embedding_has_the_padding_row_of_its_source():
    # official code: Embedding(nc + 1, padding_idx = nc) (a zero pad row); Ultralytics' rtdetr-l: Embedding(nc)
    r18, large = build_detector("rtdetr_r18", 3), build_detector("rtdetr_l", 3)
    assert r18.decoder.denoising_class_embed.num_embeddings == 4 and r18.decoder.denoising_class_embed.padding_idx == 3
    assert large.decoder.denoising_class_embed.num_embeddings == 3


# -- golden values ----------------------------------------------------------------------------------------------
def _brute_force_cost(logits, boxes, labels, gts, alpha=0.25, gamma=2.0):
    """The matcher's cost written out element by element, for the test only."""
    q, g = boxes.shape[0], gts.shape[0]
    cost = torch.zeros(q, g)
    giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(gts, "cxcywh", "xyxy"))
    for i in range(q):
        for j in range(g):
            p = torch.sigmoid(logits[i, labels[j]])
            focal = alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
            cost[i, j] = 2 * focal + 5 * (boxes[i] - gts[j]).abs().sum() - 2 * giou[i, j]
    return cost


def test_hungarian_match_is_the_minimum_cost_assignment_of_the_formula():
    torch.manual_seed(0)
    logits, boxes = torch.randn(1, 6, 3), torch.rand(1, 6, 4) * 0.5 + 0.2
    labels, gts = torch.tensor([2, 0, 2]), torch.rand(3, 4) * 0.5 + 0.2
    (rows, cols), = hungarian_match(logits, boxes, [labels], [gts])
    cost = _brute_force_cost(logits[0], boxes[0], labels, gts)
    best = min(itertools.permutations(range(6), 3), key=lambda perm: sum(cost[perm[j], j] for j in range(3)))
    assert sorted(zip(cols.tolist(), rows.tolist(), strict=True)) == [(j, best[j]) for j in range(3)]
    # per image: an image without boxes gets no match, the other keeps its own
    matches = hungarian_match(logits.repeat(2, 1, 1), boxes.repeat(2, 1, 1), [labels, labels[:0]], [gts, gts[:0]])
    assert matches[1][0].numel() == 0 and sorted(matches[0][1].tolist()) == [0, 1, 2]


def test_varifocal_loss_golden_value():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 0.0]]])  # one image, two queries, two classes
    onehot = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    iou = torch.tensor([[0.6, 0.0]])
    sig = torch.sigmoid(logits)
    # BCE(x, t) = softplus(x) - x t; weights: 0.75 σ^2 on negatives, the IoU on the positive
    expected = 0.0
    for q in range(2):
        for c in range(2):
            x, t = logits[0, q, c], iou[0, q] * onehot[0, q, c]
            w = 0.75 * sig[0, q, c] ** 2 * (1 - onehot[0, q, c]) + t
            expected += w * (torch.nn.functional.softplus(x) - x * t) / 2  # mean over the 2 queries
    expected = expected * 2 / 1.0  # × Q / num_boxes
    assert varifocal_loss(logits, iou, onehot, num_boxes=1.0).item() == pytest.approx(float(expected), rel=1e-6)


def _raw_from(boxes, logits, imgsz=(64, 64)):
    """A one-layer eval-style raw with the encoder stack equal to the decoder's."""
    return {"boxes": boxes[None], "logits": logits[None], "enc_boxes": boxes, "enc_logits": logits,
            "dn_boxes": None, "dn_logits": None, "dn": None, "imgsz": imgsz}


def test_criterion_of_perfect_boxes_has_no_box_terms_and_its_parts_sum_to_the_total():
    targets = torch.tensor([[0, 1, 8.0, 8.0, 40.0, 24.0], [0, 0, 32.0, 32.0, 64.0, 56.0]])  # px on a 64² input
    gt = box_convert(targets[:, 2:] / 64, "xyxy", "cxcywh")
    boxes = torch.cat([gt, torch.tensor([[0.5, 0.5, 0.1, 0.1]])])[None]  # queries 0-1 exact, 2 a stray
    logits = torch.full((1, 3, 2), -6.0)
    logits[0, 0, 1] = logits[0, 1, 0] = 6.0
    criterion = RTDETRCriterion(2)
    total, parts = criterion(_raw_from(boxes, logits), targets)
    assert parts["l1"].item() == pytest.approx(0.0, abs=1e-6) and parts["giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-6)
    # the two stacks (decoder layer and encoder top-k) each contribute the same VFL of (near-)perfect predictions
    iou = torch.tensor([[1.0, 1.0, 0.0]])
    onehot = torch.zeros(1, 3, 2)
    onehot[0, 0, 1] = onehot[0, 1, 0] = 1
    assert parts["vfl"].item() == pytest.approx(2 * varifocal_loss(logits, iou, onehot, 2.0).item(), rel=1e-5)
    shifted = boxes.clone()
    shifted[0, 0, 0] += 0.05  # one centre moved by 0.05: L1 5 × 0.05 / 2 boxes per stack
    _, parts = criterion(_raw_from(shifted, logits), targets)
    assert parts["l1"].item() == pytest.approx(2 * 5 * 0.05 / 2, rel=1e-4)


def test_denoising_queries_layout_noise_bounds_and_attention_mask():
    embed = torch.nn.Embedding(4, 8, padding_idx=3)
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]]), torch.tensor([[0.5, 0.5, 0.4, 0.4]])]
    g = torch.Generator().manual_seed(0)
    dn = denoising_queries(labels, boxes, embed, 3, num_queries=5, num_denoising=10, label_noise_ratio=0.0,
                           generator=g)
    groups, max_gt = dn["groups"], 2
    assert groups == 5 and dn["num_dn"] == 2 * groups * max_gt == 20
    mask = dn["attn_mask"]
    assert mask.shape == (25, 25)
    assert mask[20:, :20].all() and not mask[20:, 20:].any()  # matching queries never see the denoising ones
    assert not mask[:20, 20:].any()  # denoising queries see the matching ones
    group = torch.arange(20) // (2 * max_gt)
    assert torch.equal(mask[:20, :20], group[:, None] != group[None, :])  # groups do not see each other
    reference = torch.sigmoid(dn["reference"])
    corners = box_convert(reference, "cxcywh", "xyxy")
    positive_iou, negative_iou = [], []
    for i, (lab, box) in enumerate(zip(labels, boxes, strict=True)):
        gt = box_convert(box, "cxcywh", "xyxy")
        half = (box[:, 2:] / 2).repeat(1, 2)
        for k in range(groups):
            pos = corners[i, 2 * k * max_gt: 2 * k * max_gt + len(lab)]
            neg = corners[i, (2 * k + 1) * max_gt: (2 * k + 1) * max_gt + len(lab)]
            assert ((pos - gt).abs() <= half + 1e-5).all()  # positive: every corner within half a side
            # negative: corners moved by 1-2 half sides (a box may turn inside out, as in the official code)
            positive_iou += box_iou(pos, gt).diagonal().tolist()
            negative_iou += box_iou(neg, gt).diagonal().tolist()
        # the positive query indices point at the positive blocks, ground truth 0..G_i-1 in every group
        expected = torch.tensor([2 * k * max_gt + j for k in range(groups) for j in range(len(lab))])
        assert torch.equal(dn["positive"][i], expected)
    assert min(positive_iou) > 0 and sum(negative_iou) / len(negative_iou) < 0.5 * sum(positive_iou) / len(positive_iou)
    # label_noise 0: the content of every real slot is its class embedding; image 1's pad slot is the zero pad row
    assert torch.equal(dn["content"][1, 1], torch.zeros(8)) and torch.equal(dn["content"][0, 1], embed.weight[2])


def test_anchors_and_position_embedding_golden_values():
    logits, valid = generate_anchors([(2, 2), (1, 1)])
    anchors = torch.sigmoid(logits[0])
    torch.testing.assert_close(anchors[:4, :2], torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    torch.testing.assert_close(anchors[:4, 2:], torch.full((4, 2), 0.05))
    torch.testing.assert_close(anchors[4], torch.tensor([0.5, 0.5, 0.1, 0.1]))
    assert valid.all()
    logits, valid = generate_anchors([(100, 100)])  # centres 0.005 from the border: outside (0.01, 0.99)
    assert not valid[0, 0, 0] and math.isinf(logits[0, 0, 0]) and valid[0, 101, 0]
    pos = sincos_position_embedding(3, 2, dim=8, temperature=10000.0)
    assert pos.shape == (1, 6, 8)
    # position 0 is (0, 0): sin 0, cos 1 in every band; the official meshgrid(w, h, 'ij') ordering: token 1 has w 0, h 1
    torch.testing.assert_close(pos[0, 0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))
    omega = torch.tensor([1.0, 1e-2])
    torch.testing.assert_close(pos[0, 1], torch.cat([torch.zeros(2), torch.ones(2), omega.sin(), omega.cos()]))


def test_deformable_attention_samples_the_value_at_its_locations():
    value = torch.arange(16.0).view(1, 4, 4)[None].permute(0, 2, 3, 1).reshape(1, 16, 1, 1)  # one level 4×4, d 1
    # sampling at the centre of pixel (x=1, y=2) returns its value (2·4 + 1) exactly (align_corners=False)
    loc = torch.tensor([(1 + 0.5) / 4, (2 + 0.5) / 4]).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, [(4, 4)], loc, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(9.0)


def test_select_top_queries_is_nms_free():
    boxes = torch.tensor([[[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 9, 9.0]]])  # two identical boxes both survive
    scores = torch.tensor([[[0.9, 0.1], [0.8, 0.7], [0.0005, 0.0]]])
    single = select_top_queries(boxes, scores, conf=0.001)[0]
    assert single["scores"].tolist() == pytest.approx([0.9, 0.8]) and single["labels"].tolist() == [0, 0]
    multi = select_top_queries(boxes, scores, conf=0.001, max_det=3, multi_label=True)[0]
    assert multi["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7]) and multi["labels"].tolist() == [0, 0, 1]


# -- the model ---------------------------------------------------------------------------------------------------
TARGETS = torch.tensor([[0, 1, 10.0, 10.0, 60.0, 50.0], [0, 2, 70.0, 64.0, 120.0, 120.0], [1, 0, 20.0, 30.0, 90.0, 100.0]])


def test_training_forward_has_every_layer_and_the_denoising_groups_and_all_weights_get_gradients():
    torch.manual_seed(0)
    model = build_detector("rtdetr_r18", 3).train()
    raw = model(torch.rand(2, 3, 128, 128), TARGETS)
    assert raw["boxes"].shape == (3, 2, 300, 4) and raw["logits"].shape == (3, 2, 300, 3)
    assert raw["dn"]["groups"] == 50 and raw["dn_boxes"].shape == (3, 2, 200, 4)
    total, parts = model.loss(raw, TARGETS)
    total.backward()
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-5)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.eval()
    with torch.no_grad():
        raw = model(torch.rand(1, 3, 128, 128))
    assert raw["boxes"].shape == (1, 1, 300, 4) and raw["dn"] is None
    assert len(model.postprocess(raw, conf=0.0, max_det=50)[0]["boxes"]) == 50
    with pytest.raises(NotImplementedError, match="query-based"):
        model.kd_logits(raw)


def test_small_inputs_select_all_encoder_tokens_with_a_warning():
    model = build_detector("rtdetr_r18", 3).eval()
    with pytest.warns(UserWarning, match="189 encoder tokens"), torch.no_grad():
        raw = model(torch.rand(1, 3, 96, 96))  # 12² + 6² + 3² = 189 < 300
    assert raw["boxes"].shape[2] == 189


@pytest.mark.parametrize("name", ["rtdetr_r18", "rtdetr_r50"])
def test_fusing_keeps_the_encoder_and_the_eval_outputs(name):
    torch.manual_seed(0)
    model = build_detector(name, 3).eval()
    with torch.no_grad():
        for module in model.modules():  # trained-looking statistics (frozen ones too) so folding has work to do
            if isinstance(module, (torch.nn.BatchNorm2d,)) or type(module).__name__ == "FrozenBatchNorm2d":
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.decoder.enc_score_head.weight.mul_(50)  # well-separated scores: the top-k selection has no near ties
        images = torch.rand(1, 3, 128, 128)
        features = model.encoder(model.backbone(images))
        boxes, scores = model.decode(model(images))
        model.fuse()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        for a, b in zip(features, model.encoder(model.backbone(images)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        fused_boxes, fused_scores = model.decode(model(images))
    # the same predictions (within 0.25 px: float error through the random decoder), up to queries of near-equal
    # encoder score swapping places in the top-k order
    rows, fused_rows = torch.cat([boxes, scores], -1)[0], torch.cat([fused_boxes, fused_scores], -1)[0]
    assert torch.cdist(fused_rows, rows).min(1).values.max() < 0.25
    assert torch.cdist(rows, fused_rows).min(1).values.max() < 0.25


def test_declared_taps_match_a_forward():
    from fgkd.distill.taps import probe_shapes

    for name in ("rtdetr_r18", "rtdetr_l"):
        model = build_detector(name, 3)
        names = list(model.taps)
        for tap, shape in zip(names, probe_shapes(model, names, imgsz=128), strict=True):
            assert (model.taps[tap].channels, model.taps[tap].stride) == (shape[1], 128 // shape[-1]), (name, tap)


def test_rtdetr_learns_one_batch():
    torch.manual_seed(0)
    model = build_detector("rtdetr_r18", 3, num_queries=100, num_denoising=20).train()
    images = torch.rand(2, 3, 128, 128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    losses = []
    for _ in range(25):
        total, _ = model.loss(model(images, TARGETS), TARGETS)
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        losses.append(total.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3


def test_backbone_learning_rate_scale_and_gradient_clip_come_from_the_recipe():
    from fgkd.lit.optim import ResolvedOptimizer, build_optimizer
    from fgkd.lit.recipe import Recipe, RecipeError

    recipe = Recipe.from_config({"optimizer": {"name": "adamw", "lr": 1e-4, "backbone_lr_scale": 0.1,
                                               "clip_grad_norm": 0.1}})
    assert (recipe.backbone_lr_scale, recipe.clip_grad_norm) == (0.1, 0.1)
    with pytest.raises(RecipeError, match="clip_grad_norm"):
        Recipe.from_config({"optimizer": {"clip_grad_norm": 0}})
    model = build_detector("rtdetr_r18", 3)
    optimizer = build_optimizer([model], ResolvedOptimizer("adamw", 1e-4, 0.9, 1e-4, 0.0), scaled=[model.backbone],
                                lr_scale=0.1)
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(1e-5 if in_backbone.pop() else 1e-4)
    assert optimizer.param_groups[1]["group"] == "weight" and optimizer.param_groups[1]["lr"] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_rtdetr_through_the_fakd_pipeline(compose_train, tmp_path):
    from fgkd.engine import read_metrics
    from fgkd.pipeline import run

    cfg = compose_train("model=rtdetr_r18", "method=proposed_rb_sf", "imgsz=128", "epochs=1", "batch_size=2",
                        "num_workers=0", "data.synthpipes.num_images=8", "data.synthpipes.max_side=128",
                        "trainer.limit_train_batches=2", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    result = run(cfg)
    payload = read_metrics(result.metrics_path)
    assert payload["run"]["model"] == "rtdetr_r18" and payload["teacher"]["run"]["model"] == "rtdetr_r18"
    assert all(math.isfinite(r["train/kd"]) for r in payload["history"])
    assert set(payload["metrics"]) == {"map", "map_50", "mar_1", "mar_10", "mar_100"}
    assert all(0 <= v <= 1 for v in payload["metrics"].values()) and all(0 <= v <= 1 for v in payload["teacher"]["metrics"].values())
