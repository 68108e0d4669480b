"""Official RT-DETR weights -> fgkd ``rtdetr_r18`` / ``rtdetr_r50`` state dicts.

Two sources hold the same Apache-2.0 model (PResNet-vd + HybridEncoder + RTDETRTransformer) as plain tensors, so
neither needs its project installed:

* **rtdetr_pytorch** (``lyuwenyu/RT-DETR``) release ``.pth`` files, e.g. ``rtdetr_r18vd_dec3_6x_coco_from_paddle.pth``
  and ``rtdetr_r50vd_6x_coco_from_paddle.pth``: ``{"ema": {"module": state}}`` or ``{"model": state}``. Module
  names (``src/nn/backbone/presnet.py``, ``src/zoo/rtdetr/hybrid_encoder.py``, ``rtdetr_decoder.py``):
  ``backbone.conv1.conv1_{1,2,3}``, ``backbone.res_layers.<stage>.blocks.<i>.branch2{a,b,c}|short[.conv]``
  (``ConvNormLayer``: ``conv`` + ``norm``), ``encoder.input_proj.<i>.{0,1}``, ``encoder.encoder.0.layers.0``,
  ``decoder.input_proj.<i>.{conv,norm}``, ``decoder.decoder.layers.<l>``, the heads under ``decoder.``.
* **Hugging Face transformers** (``RTDetrForObjectDetection``, e.g. the ``PekingU/rtdetr_r18vd`` folder:
  ``config.json`` + ``model.safetensors``; the encoder layer is ``model.encoder.encoder.0`` in files,
  ``model.encoder.aifi.0`` in memory): the same tensors under other names, attention split into
  ``q_proj``/``k_proj``/``v_proj`` (fused here into PyTorch's ``in_proj`` in q, k, v order).

fgkd's names differ only in spelling (``norm`` -> ``bn``, stage ``i`` -> ``stage{i + 2}``, the RepVGG branches
``conv1``/``conv2`` -> ``dense``/``pointwise``); the size (r18: BasicBlocks and 3 decoder layers, r50:
Bottlenecks and 6) is read from the tensors. Buffers the official model precomputes for a fixed input size
(``decoder.anchors``, ``decoder.valid_mask``) are dropped: fgkd builds them for each input size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fgkd.models.convert import COCO_CLASSES, ConversionError

_STAGE = r"(?P<stage>\d)"


def _stage(match: re.Match[str]) -> str:
    return f"stage{int(match['stage']) + 2}"


def _bn(name: str) -> str:
    return "bn" if name in ("norm", "normalization", "1") else "conv"


#: rtdetr_pytorch names -> fgkd (callables receive the match)
OFFICIAL_RULES: list[tuple[str, Any]] = [
    (r"backbone\.conv1\.conv1_(\d)\.(conv|norm)\.(.+)",
     lambda m: f"backbone.stem.{int(m[1]) - 1}.{_bn(m[2])}.{m[3]}"),
    (rf"backbone\.res_layers\.{_STAGE}\.blocks\.(\d+)\.(branch2[abc])\.(conv|norm)\.(.+)",
     lambda m: f"backbone.{_stage(m)}.{m[2]}.{m[3]}.{_bn(m[4])}.{m[5]}"),
    (rf"backbone\.res_layers\.{_STAGE}\.blocks\.(\d+)\.short\.conv\.(conv|norm)\.(.+)",  # avg-pool + 1x1 ("d")
     lambda m: f"backbone.{_stage(m)}.{m[2]}.short.1.{_bn(m[3])}.{m[4]}"),
    (rf"backbone\.res_layers\.{_STAGE}\.blocks\.(\d+)\.short\.(conv|norm)\.(.+)",
     lambda m: f"backbone.{_stage(m)}.{m[2]}.short.{_bn(m[3])}.{m[4]}"),
    (r"encoder\.input_proj\.(\d)\.([01])\.(.+)", lambda m: f"encoder.input_proj.{m[1]}.{_bn(m[2])}.{m[3]}"),
    (r"encoder\.encoder\.0\.layers\.0\.(.+)", r"encoder.aifi.layer.\1"),
    (r"encoder\.(lateral_convs|downsample_convs)\.(\d)\.(conv|norm)\.(.+)",
     lambda m: f"encoder.{m[1]}.{m[2]}.{_bn(m[3])}.{m[4]}"),
    (r"encoder\.(fpn_blocks|pan_blocks)\.(\d)\.(conv[123])\.(conv|norm)\.(.+)",
     lambda m: f"encoder.{m[1]}.{m[2]}.{m[3]}.{_bn(m[4])}.{m[5]}"),
    (r"encoder\.(fpn_blocks|pan_blocks)\.(\d)\.bottlenecks\.(\d+)\.conv([12])\.(conv|norm)\.(.+)",
     lambda m: f"encoder.{m[1]}.{m[2]}.bottlenecks.{m[3]}.{'dense' if m[4] == '1' else 'pointwise'}."
               f"{_bn(m[5])}.{m[6]}"),
    (r"decoder\.input_proj\.(\d)\.(conv|norm)\.(.+)", lambda m: f"decoder.input_proj.{m[1]}.{_bn(m[2])}.{m[3]}"),
    (r"decoder\.decoder\.(layers\..+)", r"decoder.\1"),
    (r"decoder\.((?:denoising_class_embed|query_pos_head|enc_output|enc_score_head|enc_bbox_head|dec_score_head|"
     r"dec_bbox_head)\..+)", r"decoder.\1"),
]

_HF_LAYER = {"self_attn_layer_norm": "norm1", "mlp.fc1": "linear1", "fc1": "linear1", "mlp.fc2": "linear2",
             "fc2": "linear2", "self_attn": "self_attn"}
_DECODER_LAYER = {"encoder_attn": "cross_attn", "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"}
#: transformers names -> fgkd (after the q/k/v fusion of :func:`_fuse_attention`)
HF_RULES: list[tuple[str, Any]] = [
    (r"model\.backbone\.model\.embedder\.embedder\.(\d)\.(convolution|normalization)\.(.+)",
     lambda m: f"backbone.stem.{m[1]}.{_bn(m[2])}.{m[3]}"),
    (rf"model\.backbone\.model\.encoder\.stages\.{_STAGE}\.layers\.(\d+)\.layer\.(\d)\.(convolution|normalization)"
     r"\.(.+)", lambda m: f"backbone.{_stage(m)}.{m[2]}.branch2{'abc'[int(m[3])]}.{_bn(m[4])}.{m[5]}"),
    (rf"model\.backbone\.model\.encoder\.stages\.{_STAGE}\.layers\.(\d+)\.shortcut\.(1\.)?(convolution|"
     r"normalization)\.(.+)", lambda m: f"backbone.{_stage(m)}.{m[2]}.short.{m[3] or ''}{_bn(m[4])}.{m[5]}"),
    (r"model\.encoder_input_proj\.(\d)\.([01])\.(.+)", lambda m: f"encoder.input_proj.{m[1]}.{_bn(m[2])}.{m[3]}"),
    (r"model\.encoder\.(?:aifi|encoder)\.0\.layers\.0\.(self_attn_layer_norm|final_layer_norm|self_attn|mlp\.fc[12]|fc[12])\."
     r"(.+)", lambda m: f"encoder.aifi.layer.{'norm2' if m[1] == 'final_layer_norm' else _HF_LAYER[m[1]]}.{m[2]}"),
    (r"model\.encoder\.((?:lateral_convs|downsample_convs|fpn_blocks|pan_blocks)\..+)",
     lambda m: _rename(f"encoder.{m[1]}", OFFICIAL_RULES)),  # the neck is spelled as in rtdetr_pytorch
    (r"model\.decoder_input_proj\.(\d)\.([01])\.(.+)", lambda m: f"decoder.input_proj.{m[1]}.{_bn(m[2])}.{m[3]}"),
    (r"model\.decoder\.layers\.(\d+)\.(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm|self_attn|"
     r"encoder_attn|mlp\.fc[12]|fc[12])\.(.+)",
     lambda m: f"decoder.layers.{m[1]}.{_DECODER_LAYER.get(m[2]) or _HF_LAYER[m[2]]}.{m[3]}"),
    (r"model\.decoder\.query_pos_head\.(.+)", r"decoder.query_pos_head.\1"),
    (r"model\.decoder\.class_embed\.(.+)", r"decoder.dec_score_head.\1"),
    (r"model\.decoder\.bbox_embed\.(.+)", r"decoder.dec_bbox_head.\1"),
    (r"model\.((?:denoising_class_embed|enc_output|enc_score_head|enc_bbox_head)\..+)", r"decoder.\1"),
]
#: keys with no fgkd tensor: anchors precomputed for one input size; the tied top-level copies of the decoder heads
_SKIPPED = re.compile(r"^(decoder\.(anchors|valid_mask)|model\.decoder\.(anchors|valid_mask)|class_embed\.\d+\..+|"
                      r"bbox_embed\.\d+\..+)$")


def _rename(key: str, rules: list[tuple[str, Any]]) -> str:
    """``key`` renamed by the first rule that matches it whole; unmatched keys stay as they are (the checked
    mapping of :func:`fgkd.models.convert.map_by_rules` then names them)."""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return key


def is_rtdetr_state(state: Any) -> str | None:
    """``"official"`` or ``"hf"`` when ``state`` is an RT-DETR (r18/r50) state dict of that source, else None."""
    if not isinstance(state, Mapping) or not state:
        return None
    keys = set(map(str, state))
    if any(k.startswith("backbone.res_layers.") for k in keys) and any(k.startswith("decoder.decoder.") for k in keys):
        return "official"
    if any(k.startswith("model.backbone.model.encoder.stages.") for k in keys) and "model.enc_output.0.weight" in keys:
        return "hf"
    return None


def official_state(checkpoint: Any) -> Mapping[str, torch.Tensor] | None:
    """The model state of an rtdetr_pytorch checkpoint (``ema.module`` first, then ``model``), or None."""
    if not isinstance(checkpoint, Mapping):
        return None
    ema = checkpoint.get("ema")
    for candidate in ((ema or {}).get("module") if isinstance(ema, Mapping) else None, checkpoint.get("model"),
                      checkpoint):
        if is_rtdetr_state(candidate) == "official":
            return candidate
    return None


def read_hf(path: Path) -> tuple[Mapping[str, torch.Tensor], list[str] | None]:
    """A transformers folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) or weights file:
    ``(state, class names from config.json's id2label or None)``."""
    folder = path if path.is_dir() else path.parent
    weights = path
    if path.is_dir():
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise ConversionError(f"{path}: a transformers folder needs model.safetensors or pytorch_model.bin")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file  # installed with huggingface_hub, which wandb and timm bring

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    names = None
    config = folder / "config.json"
    if config.is_file():
        id2label = json.loads(config.read_text()).get("id2label") or {}
        names = [id2label[k] for k in sorted(id2label, key=int)] or None
    return state, names


def from_rtdetr(state: Mapping[str, torch.Tensor], source: str, model: str | None = None,
                class_names: list[str] | None = None) -> tuple[str, int, list[str], dict[str, torch.Tensor]]:
    """``(fgkd model name, classes, class names, float32 state dict in fgkd names)``."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if not _SKIPPED.match(k)}
    if source == "hf":
        state = _fuse_attention(state)
    bottleneck = any(".branch2c." in k or ".layer.2." in k for k in state)
    layer = re.compile(r"(?:decoder\.decoder|model\.decoder)\.layers\.(\d+)\.")
    decoder_layers = 1 + max((int(m[1]) for k in state if (m := layer.match(k))), default=-1)
    found = {(False, 3): "rtdetr_r18", (True, 6): "rtdetr_r50"}.get((bottleneck, decoder_layers))
    if model is None:
        if found is None:
            raise ConversionError(f"an RT-DETR with {'Bottleneck' if bottleneck else 'BasicBlock'} stages and "
                                  f"{decoder_layers} decoder layers: fgkd has r18 (BasicBlock, 3 layers) and r50 "
                                  "(Bottleneck, 6 layers); r34/r101 and other depths have no fgkd counterpart")
        model = found
    if model not in ("rtdetr_r18", "rtdetr_r50"):
        raise ConversionError(f"--model {model}: official RT-DETR weights convert to rtdetr_r18 or rtdetr_r50")
    score = state.get("decoder.enc_score_head.weight", state.get("model.enc_score_head.weight"))
    num_classes = int(score.shape[0])
    if class_names is None:
        class_names = list(COCO_CLASSES) if num_classes == len(COCO_CLASSES) else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ConversionError(f"{len(class_names)} class names (config.json id2label) for {num_classes} classes")
    rules = OFFICIAL_RULES if source == "official" else HF_RULES
    return model, num_classes, class_names, {_rename(key, rules): value for key, value in state.items()}


def _fuse_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' ``self_attn.{q,k,v}_proj`` -> ``self_attn.in_proj_{weight,bias}`` (q, k, v stacked, as
    ``nn.MultiheadAttention`` keeps them) and ``o_proj`` -> ``out_proj``."""
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"(.+\.self_attn)\.([qkvo])_proj\.(weight|bias)", key)
        if match is None:
            out[key] = value
        elif match[2] == "o":
            out[f"{match[1]}.out_proj.{match[3]}"] = value
        elif match[2] == "q":
            parts = [state.get(f"{match[1]}.{p}_proj.{match[3]}") for p in "qkv"]
            if any(p is None for p in parts):
                raise ConversionError(f"{match[1]}: q_proj/k_proj/v_proj {match[3]} are not all in the checkpoint")
            out[f"{match[1]}.in_proj_{match[3]}"] = torch.cat(parts, 0)
    return out
