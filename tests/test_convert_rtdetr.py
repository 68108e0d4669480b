"""Official RT-DETR r18/r50 weights (rtdetr_pytorch ``.pth`` and Hugging Face transformers) -> fgkd.

The source model with random weights comes from transformers (``RTDetrForObjectDetection``, a port of the official
Apache-2.0 model; the tests are skipped without ``pip install transformers``). The rtdetr_pytorch ``.pth`` is built
from the same tensors, renamed here to the official module names (``src/nn/backbone/presnet.py``,
``src/zoo/rtdetr/hybrid_encoder.py``, ``rtdetr_decoder.py`` of lyuwenyu/RT-DETR), written independently of the
converter's own rules.
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers.statistics import randomise_batchnorm

from fgkd.models.convert import COCO_CLASSES, ConversionError, convert
from fgkd.models.convert.rtdetr import from_rtdetr
from fgkd.tasks.detect import load_detector

#: parameters of fgkd rtdetr_r18 at 80 classes = transformers' RTDetrForObjectDetection with the r18vd config
R18_PARAMETERS = 20_184_464


def _transformers_r18(num_classes: int = 80):
    transformers = pytest.importorskip("transformers")
    backbone = transformers.RTDetrResNetConfig(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                               layer_type="basic", out_indices=[2, 3, 4])
    config = transformers.RTDetrConfig(backbone_config=backbone, encoder_in_channels=[128, 256, 512],
                                       hidden_expansion=0.5, decoder_layers=3, num_labels=num_classes,
                                       freeze_backbone_batch_norms=False)
    torch.manual_seed(0)
    model = transformers.RTDetrForObjectDetection(config)
    randomise_batchnorm(model)
    return model.eval()


def _assert_same_detections(source, detector) -> None:
    """Equal outputs as sets of queries: random weights give near-tied encoder scores (1e-6 apart), so the
    top-300 selection may list the same queries in another order, or swap the 300th and 301st."""
    images = torch.rand(1, 3, 320, 320)
    detector.eval()
    with torch.no_grad():
        reference = source(pixel_values=images)
        raw = detector(images)
    theirs = torch.cat([reference.pred_boxes, reference.logits.sigmoid()], -1)[0]
    ours = torch.cat([raw["boxes"][-1], raw["logits"][-1].sigmoid()], -1)[0]
    assert ours.shape == theirs.shape == (300, 84)
    nearest = torch.cdist(ours, theirs, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert (nearest < 1e-4).sum() >= 298, nearest.topk(3).values


def _transformers_r50():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.RTDetrForObjectDetection(transformers.RTDetrConfig(num_labels=80)).eval()  # defaults: r50vd


def test_transformers_rtdetr_r50_converts_to_equal_outputs(tmp_path):
    source = _transformers_r50()
    source.save_pretrained(tmp_path / "rtdetr_r50vd")
    detector, info = load_detector(convert(tmp_path / "rtdetr_r50vd" / "model.safetensors", tmp_path / "fgkd.pt"))
    assert info["detector"]["name"] == "rtdetr_r50" and info["detector"]["num_classes"] == 80
    _assert_same_detections(source, detector)


def test_transformers_rtdetr_r18_folder_converts_to_equal_outputs(tmp_path):
    source = _transformers_r18()
    source.config.id2label = {i: f"defect{i}" for i in range(80)}
    source.save_pretrained(tmp_path / "rtdetr_r18vd")  # config.json + model.safetensors, as on the Hub
    out = convert(tmp_path / "rtdetr_r18vd", tmp_path / "fgkd.pt")
    detector, info = load_detector(out)
    assert info["detector"]["name"] == "rtdetr_r18" and detector.num_trainable_parameters() == R18_PARAMETERS
    assert info["class_names"][:2] == ["defect0", "defect1"]  # from config.json's id2label
    _assert_same_detections(source, detector)


# the official module names, from the rtdetr_pytorch sources (HF name -> official name)
_OFFICIAL = [
    (r"model\.backbone\.model\.embedder\.embedder\.(\d)\.convolution\.(.+)", lambda m: f"backbone.conv1.conv1_{int(m[1]) + 1}.conv.{m[2]}"),
    (r"model\.backbone\.model\.embedder\.embedder\.(\d)\.normalization\.(.+)", lambda m: f"backbone.conv1.conv1_{int(m[1]) + 1}.norm.{m[2]}"),
    (r"model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d)\.layer\.(\d)\.(convolution|normalization)\.(.+)",
     lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.branch2{'abc'[int(m[3])]}.{m[4][:4]}.{m[5]}"),
    (r"model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d)\.shortcut\.1\.(convolution|normalization)\.(.+)",
     lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.short.conv.{m[3][:4]}.{m[4]}"),
    (r"model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d)\.shortcut\.(convolution|normalization)\.(.+)",
     lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.short.{m[3][:4]}.{m[4]}"),
    (r"model\.encoder_input_proj\.(.+)", r"encoder.input_proj.\1"),
    (r"model\.encoder\.encoder\.0\.layers\.0\.(.+)", r"encoder.encoder.0.layers.0.\1"),
    (r"model\.encoder\.(.+)", r"encoder.\1"),
    (r"model\.decoder_input_proj\.(\d)\.0\.(.+)", r"decoder.input_proj.\1.conv.\2"),
    (r"model\.decoder_input_proj\.(\d)\.1\.(.+)", r"decoder.input_proj.\1.norm.\2"),
    (r"model\.decoder\.layers\.(.+)", r"decoder.decoder.layers.\1"),
    (r"model\.decoder\.class_embed\.(.+)", r"decoder.dec_score_head.\1"),
    (r"model\.decoder\.bbox_embed\.(.+)", r"decoder.dec_bbox_head.\1"),
    (r"model\.decoder\.(.+)", r"decoder.\1"),
    (r"model\.(.+)", r"decoder.\1"),
]
_LAYER = {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2", "encoder_attn": "cross_attn",
          "fc1": "linear1", "fc2": "linear2", "mlp.fc1": "linear1", "mlp.fc2": "linear2"}


def _official_state(source) -> dict[str, torch.Tensor]:
    """The transformers model's tensors under rtdetr_pytorch names (from its file layout: ``encoder.encoder.0``,
    ``self_attn.out_proj``, q/k/v split)."""
    import tempfile

    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory() as folder:
        source.save_pretrained(folder)
        hf = load_file(f"{folder}/model.safetensors")
    out = {}
    for key, value in hf.items():
        for pattern, replacement in _OFFICIAL:
            if re.fullmatch(pattern, key):
                key = replacement(re.fullmatch(pattern, key)) if callable(replacement) else re.sub(pattern, replacement, key)
                break
        layer = re.fullmatch(r"(.+\.layers\.\d+)\.((?:mlp\.)?[a-z_0-9]+)\.(.+)", key)
        if layer and layer[2] != "self_attn":
            norm3 = "norm3" if key.startswith("decoder.") else "norm2"
            part = {"final_layer_norm": norm3, **_LAYER}.get(layer[2], layer[2])
            key = f"{layer[1]}.{part}.{layer[3]}"
        out[key] = value
    for prefix in {k.rsplit(".", 3)[0] for k in out if re.search(r"self_attn\.q_proj\.weight$", k)}:
        for kind in ("weight", "bias"):  # nn.MultiheadAttention: in_proj = [q; k; v]
            out[f"{prefix}.self_attn.in_proj_{kind}"] = torch.cat([out.pop(f"{prefix}.self_attn.{p}_proj.{kind}")
                                                                  for p in "qkv"])
    out["decoder.anchors"] = torch.zeros(1, 8400, 4)  # precomputed for eval_spatial_size 640 (dropped)
    out["decoder.valid_mask"] = torch.ones(1, 8400, 1, dtype=torch.bool)
    return out


def test_rtdetr_pytorch_release_pth_converts_to_equal_outputs(tmp_path):
    source = _transformers_r18()
    state = _official_state(source)
    for key in ("backbone.conv1.conv1_3.norm.running_var", "backbone.res_layers.0.blocks.0.short.conv.weight",
                "backbone.res_layers.1.blocks.0.short.conv.norm.weight", "encoder.input_proj.2.1.running_mean",
                "encoder.encoder.0.layers.0.self_attn.in_proj_weight", "encoder.fpn_blocks.1.bottlenecks.2.conv2.norm.bias",
                "decoder.input_proj.0.norm.weight", "decoder.decoder.layers.2.cross_attn.sampling_offsets.weight",
                "decoder.decoder.layers.0.norm3.weight", "decoder.dec_bbox_head.2.layers.2.bias"):
        assert key in state, key  # the official layout, as its sources name the modules
    torch.save({"ema": {"module": state, "updates": 1000}, "last_epoch": 71}, tmp_path / "rtdetr_r18vd.pth")
    out = convert(tmp_path / "rtdetr_r18vd.pth", tmp_path / "fgkd.pt")
    detector, info = load_detector(out)
    assert info["detector"]["name"] == "rtdetr_r18" and info["class_names"] == list(COCO_CLASSES)
    _assert_same_detections(source, detector)


def test_rtdetr_depths_without_an_fgkd_model_are_refused():
    state = {"backbone.res_layers.0.blocks.0.branch2a.conv.weight": torch.zeros(1),
             "decoder.decoder.layers.0.norm1.weight": torch.zeros(1), "decoder.enc_score_head.weight": torch.zeros(80, 1)}
    with pytest.raises(ConversionError, match=r"BasicBlock stages and 1 decoder layers.*r34/r101"):
        from_rtdetr(state, "official")
    with pytest.raises(ConversionError, match="rtdetr_r18 or rtdetr_r50"):
        from_rtdetr(state, "official", model="rtdetr_l")
