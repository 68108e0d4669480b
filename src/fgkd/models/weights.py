"""Load local weights into any model (every detector family uses this; nothing is ever downloaded).

Accepted files (``torch.save`` output, ``.pt``/``.pth``/``.ckpt``):

* a raw ``state_dict`` (``{name: tensor}``);
* a Lightning checkpoint ``{"state_dict": {...}, ...}`` whose keys carry the LightningModule attribute
  prefix (``student.``, ``model.``, …) — the prefix is found automatically or given explicitly;
* ``{"model": state_dict_or_module}`` (also ``"ema"``/``"model_state_dict"`` as fall-backs).

Shape mismatches are always an error unless ``skip_mismatched=True`` (then those tensors keep their
current values, e.g. a head trained for a different number of classes).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

#: preferred prefixes when several match equally well (a KD checkpoint holds both student and teacher)
PREFERRED_PREFIXES = ("", "student.", "model.", "student.model.", "model.model.", "module.")
_LIST_LIMIT = 10


@dataclass
class LoadReport:
    """What ``load_weights`` did: the stripped prefix and the keys it could not load."""

    path: str
    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (…) vs model (…)"


def _read_checkpoint(path: Path) -> object:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # Lightning checkpoints pickle their hyper-parameters (OmegaConf objects); the user named
            # this local file as their own checkpoint, so a full unpickle is acceptable here.
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # garbage/truncated files raise KeyError, RuntimeError, EOFError …
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err


def extract_state_dict(checkpoint: object, path: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint (see the module docstring for the layouts)."""
    if isinstance(checkpoint, nn.Module):
        return checkpoint.state_dict()
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a state_dict or a checkpoint dict, got {type(checkpoint).__name__}")
    for key in ("state_dict", "model", "ema", "model_state_dict"):
        inner = checkpoint.get(key)
        if isinstance(inner, nn.Module):
            return inner.state_dict()
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(checkpoint):
        return tensors
    raise ValueError(
        f"{path}: no state_dict found; top-level keys are {sorted(map(str, checkpoint))[:_LIST_LIMIT]}. "
        "Save `model.state_dict()` or a Lightning checkpoint ({'state_dict': ...})."
    )


def find_prefix(checkpoint_keys: list[str], model_keys: set[str]) -> str:
    """The key prefix whose stripping matches the most model keys (ties: ``PREFERRED_PREFIXES`` order,
    then the shortest)."""
    counts: dict[str, int] = {}
    for key in checkpoint_keys:
        if key in model_keys:
            counts[""] = counts.get("", 0) + 1
        start = key.find(".")
        while start != -1:
            if key[start + 1 :] in model_keys:
                prefix = key[: start + 1]
                counts[prefix] = counts.get(prefix, 0) + 1
            start = key.find(".", start + 1)
    if not counts:
        return ""
    best = max(counts.values())
    candidates = [p for p, c in counts.items() if c == best]
    preferred = [p for p in PREFERRED_PREFIXES if p in candidates]
    return preferred[0] if preferred else min(candidates, key=lambda p: (len(p), p))


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" … (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return f"\n  {title} ({len(keys)}): {shown}{more}"


def load_weights(
    model: nn.Module,
    path: str | Path,
    strict: bool = True,
    *,
    prefix: str | None = None,
    skip_mismatched: bool = False,
) -> LoadReport:
    """Load the weights stored at ``path`` into ``model`` in place.

    ``strict``: missing or unexpected keys (after prefix stripping) raise a RuntimeError that lists them.
    ``prefix``: key prefix to strip (``"student."``, ``"teacher."`` …); ``None`` = detect it. Only keys
    with that prefix are considered, so the other sub-models in a Lightning checkpoint are ignored.
    ``skip_mismatched``: keep the model's own tensors where shapes differ instead of raising.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path} (give a local .pt/.ckpt path; weights are never downloaded)"
        )
    state = extract_state_dict(_read_checkpoint(path), str(path))
    model_state = model.state_dict()
    if prefix is None:
        prefix = find_prefix(list(state), set(model_state))
    selected = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not selected:
        raise ValueError(f"{path}: no keys start with prefix {prefix!r}; first keys: {list(state)[:_LIST_LIMIT]}")

    report = LoadReport(path=str(path), prefix=prefix)
    loadable: dict[str, torch.Tensor] = {}
    for key, value in selected.items():
        if key not in model_state:
            report.unexpected.append(key)
        elif value.shape != model_state[key].shape:
            report.mismatched.append(
                f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(model_state[key].shape)}"
            )
        else:
            loadable[key] = value
    report.missing = [k for k in model_state if k not in selected]
    report.loaded = list(loadable)

    if report.mismatched and not skip_mismatched:
        raise ValueError(
            f"{path}: {len(report.mismatched)} tensor shape mismatch(es) for {type(model).__name__} "
            f"(prefix {prefix!r}); wrong model size or number of classes? Pass skip_mismatched=True to keep "
            f"the model's own values for these." + _listing("mismatched", report.mismatched)
        )
    if strict and (report.missing or report.unexpected):
        raise RuntimeError(
            f"{path}: checkpoint does not match {type(model).__name__} (prefix {prefix!r}); "
            "pass strict=False to load the matching part only."
            + (_listing("missing in checkpoint", report.missing) if report.missing else "")
            + (_listing("unexpected in checkpoint", report.unexpected) if report.unexpected else "")
        )
    model.load_state_dict(loadable, strict=False)
    return report
