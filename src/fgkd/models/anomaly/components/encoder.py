"""The frozen teacher encoder of reverse distillation: a timm ``features_only`` CNN, always in eval mode.

``FrozenEncoder("wide_resnet50_2", layers=(1, 2, 3))`` returns the maps of ResNet stages conv2_x-conv4_x
(strides 4/8/16; WRN50-2: 256/512/1024 channels, ResNet18/34: 64/128/256). The FrozenTeacher rules hold:
no gradients, no optimizer parameters (``requires_grad`` off), eval mode even under ``.train()`` (BN statistics
never move), ``torch.no_grad`` forward. Unlike the detection teacher it *is* a sub-module, so the exported
anomaly model is self-contained (the map needs the encoder at inference).

``weights=PATH`` loads a local torchvision or timm state-dict file (``wide_resnet50_2-95faca4d.pth``,
``resnet34-b627a593.pth``, a timm ``.safetensors``/``.pth``); ``layer4.*`` and ``fc.*`` are dropped, every
other key must match. Nothing is downloaded: without weights the encoder is randomly initialised and a loud
warning says that RD's numbers need ImageNet features (paper 001 Table 5: 78.99 vs 99.43 image AUROC).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

#: encoders the RD models are defined for (timm names; torchvision files share their keys)
ENCODERS = ("wide_resnet50_2", "resnet50", "resnet34", "resnet18")
#: keys of a full classification checkpoint that a conv2_x-conv4_x encoder does not have
_DROPPED_PREFIXES = ("layer4.", "fc.")


def encoder_spec(spec: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return {"name": spec, "weights": None}
    unknown = set(spec) - {"name", "weights"}
    if unknown:
        raise ValueError(f"model.encoder: unknown keys {sorted(unknown)}; allowed: name, weights")
    return {"name": str(spec.get("name", "wide_resnet50_2")), "weights": spec.get("weights")}


class RandomEncoderWarning(UserWarning):
    """An RD encoder without ImageNet weights (valid for tests and smoke runs, not for the papers' numbers)."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"model.encoder.weights={path}: no such file (give a torchvision/timm ImageNet "
                                "state dict, e.g. wide_resnet50_2-95faca4d.pth)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from fgkd.models.weights import _read_checkpoint, extract_state_dict

    return extract_state_dict(_read_checkpoint(path), str(path))


class FrozenEncoder(nn.Module):
    """Frozen multi-scale features of a timm CNN (see the module docstring)."""

    def __init__(self, name: str = "wide_resnet50_2", layers: Sequence[int] = (1, 2, 3),
                 weights: str | None = None) -> None:
        super().__init__()
        if name not in ENCODERS:
            raise ValueError(f"encoder {name!r} is not supported; choose one of {', '.join(ENCODERS)}")
        self.name = name
        self.layers = tuple(int(i) for i in layers)
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=self.layers)
        self.channels: tuple[int, ...] = tuple(self.body.feature_info.channels())
        self.strides: tuple[int, ...] = tuple(self.body.feature_info.reduction())
        self.weights = str(weights) if weights else None
        if weights:
            self.load_pretrained(Path(str(weights)).expanduser())
        else:
            warnings.warn(f"RD encoder {name} has random weights: reverse distillation needs ImageNet features for "
                          f"real results; pass model.encoder.weights=/path/{name}.pth (a torchvision/timm state "
                          "dict). Fine for tests and smoke runs.", RandomEncoderWarning, stacklevel=2)
        self.requires_grad_(False)
        super().train(False)

    def load_pretrained(self, path: Path) -> None:
        state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(_DROPPED_PREFIXES)}
        own = self.body.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or mismatched:
            raise ValueError(f"{path}: not a {self.name} state dict: {len(missing)} missing (e.g. {missing[:3]}), "
                             f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), mismatched {mismatched[:3]}")
        self.body.load_state_dict(state)

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # frozen: BN statistics never update

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(images))
