"""Feature taps: record the outputs of named modules during one forward pass (forward hooks).

Usage (student and frozen teacher alike; DESIGN.md "Interfaces")::

    taps = FeatureTaps(student, ["backbone.p3", "backbone.p4", "backbone.p5"])
    with taps:
        raw = student(images)
    feats = taps.features            # list of tensors, in the order of ``names``

Policies (ecosystem.md §4.3, kd_losses.md §6.4.6):

* **Names.** A name is looked up in ``model.taps`` (the Detector interface: tap name -> TapInfo) or,
  failing that, used as a module path (``model.get_submodule``). ``module_paths`` overrides both.
  Unknown names raise a KeyError listing the valid ones.
* **One forward per context.** Entering the context clears the previous records. A tap that fires a second
  time inside one context (a module reused in the forward, or two forwards) raises a RuntimeError at once;
  a tap that did not fire raises a RuntimeError when ``features`` is read.
* **In-place successors.** A forward hook sees the module output *before* the next module runs, so a
  following ``ReLU(inplace=True)`` would silently overwrite the recorded tensor. By default nothing is
  copied (no memory cost) but the tensor's autograd version counter is remembered, and reading
  ``features`` after the tensor was modified in place raises a RuntimeError. ``clone=True`` records a copy
  instead (differentiable, costs one extra map per tap).
* **Wrappers.** ``DistributedDataParallel`` (and ``torch.compile``'s wrapper) are unwrapped so the hooks sit
  on the inner module; hooks are per-process, so DDP is fine. ``DataParallel`` is refused: its replicas
  fire the hooks from several threads.
* **AMP.** Tensors are recorded as produced (fp16/bf16 under autocast); the KD losses cast to fp32.
* **Teacher.** Run it under ``torch.no_grad()``, not ``torch.inference_mode()``: inference tensors cannot be
  saved for the student's backward (ecosystem.md §3.3); the version check is skipped for them.
* **Early exit.** ``stop_when_complete=True`` ends the forward as soon as every tap has fired (the last hook
  raises :class:`TapsComplete`, which the context swallows): a frozen teacher whose maps are all in the
  backbone then skips its neck and head. The model's output is not produced; use it for feature taps only.
* Hooks are removed on exit, also when the forward raised. Activation checkpointing re-runs forwards in
  backward: leave the context before ``backward()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureTaps", "TapsComplete", "probe_channels", "probe_shapes", "select_taps", "tap_geometry", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that owns the parameters: strips DDP and ``torch.compile`` wrappers; refuses DataParallel."""
    while True:
        if isinstance(model, nn.DataParallel):
            raise TypeError(
                "FeatureTaps does not support nn.DataParallel (hooks fire once per replica thread); "
                "use DistributedDataParallel (Lightning strategy='ddp') or a single device"
            )
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile wrapper
            model = model._orig_mod
        else:
            return model


def _valid_names_message(model: nn.Module, tap_map: Mapping[str, str] | None) -> str:
    if tap_map:
        return f"valid taps: {sorted(tap_map)} (module paths are accepted too)"
    paths = [name for name, _ in model.named_modules() if name]
    shown = ", ".join(paths[:60]) + (f", ... ({len(paths) - 60} more)" if len(paths) > 60 else "")
    return f"valid module paths: {shown}"


def _resolve(
    model: nn.Module, names: Sequence[str], module_paths: Mapping[str, str] | None
) -> list[nn.Module]:
    tap_map: Mapping[str, str] | None = module_paths
    if tap_map is None:
        model_taps = getattr(model, "taps", None)
        tap_map = model_taps if isinstance(model_taps, Mapping) else None
    modules = []
    for name in names:
        entry = tap_map[name] if tap_map is not None and name in tap_map else name
        path = getattr(entry, "module", entry)  # a Detector's TapInfo, or a plain module path
        try:
            modules.append(model.get_submodule(path))
        except AttributeError:
            if path != name:  # the mapping itself is wrong: a bug in the detector's ``taps``
                raise KeyError(
                    f"tap {name!r} maps to module path {path!r}, which does not exist in {type(model).__name__}"
                ) from None
            raise KeyError(
                f"unknown tap {name!r} for {type(model).__name__}; {_valid_names_message(model, tap_map)}"
            ) from None
    return modules


class TapsComplete(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the last tap of a ``FeatureTaps(..., stop_when_complete=True)`` to end the forward early."""


class FeatureTaps:
    """Context manager recording the outputs of the modules named ``names`` during one forward pass.

    Args:
        model: the detector (or any ``nn.Module``); DDP / ``torch.compile`` wrappers are unwrapped.
        names: tap names (keys of ``model.taps``) or module paths; ``features`` follows this order.
        module_paths: optional explicit ``{name: module path}`` mapping, used instead of ``model.taps``.
        clone: record a copy of each output (safe against later in-place ops) instead of the tensor itself.
        stop_when_complete: end the forward once every tap fired (see "Early exit" above).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        module_paths: Mapping[str, str] | None = None,
        clone: bool = False,
        stop_when_complete: bool = False,
    ) -> None:
        if isinstance(names, str):
            raise TypeError(f"names must be a list of tap names, got the string {names!r}; use [{names!r}]")
        names = list(names)
        if not names:
            raise ValueError("FeatureTaps needs at least one tap name")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tap names must be unique, got duplicates {duplicates}")
        self.model = unwrap_model(model)
        self.names = names
        self.clone = clone
        self.stop_when_complete = stop_when_complete
        self._modules = _resolve(self.model, names, module_paths)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._records: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int | None] = {}

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name in self._records:
                raise RuntimeError(
                    f"tap {name!r} ({type(module).__name__}) fired twice inside one FeatureTaps context: "
                    "the module is called more than once per forward (shared module), or the model ran "
                    "twice; tap a module that runs once, and use one context per forward"
                )
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"tap {name!r} ({type(module).__name__}) returned {type(output).__name__}, not a Tensor; "
                    "tap a module whose output is a single feature map"
                )
            if self.clone:
                output = output.clone()
            self._records[name] = output
            # Inference tensors have no version counter; they are never modified in place by autograd code.
            self._versions[name] = None if output.is_inference() else output._version
            if self.stop_when_complete and len(self._records) == len(self.names):
                raise TapsComplete

        return hook

    def __enter__(self) -> FeatureTaps:
        if self._handles:
            raise RuntimeError("FeatureTaps context entered twice without exiting")
        self.clear()
        try:
            for name, module in zip(self.names, self._modules, strict=True):
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self.remove()
        return exc_type is TapsComplete  # the early exit asked for; anything else propagates

    def remove(self) -> None:
        """Remove the hooks (idempotent); the records stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Drop the records (and with them any autograd graph they hold)."""
        self._records.clear()
        self._versions.clear()

    @property
    def by_name(self) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` after a forward; raises if a tap did not fire or was modified in place."""
        missing = [name for name in self.names if name not in self._records]
        if missing:
            raise RuntimeError(
                f"taps {missing} did not fire: the forward inside the FeatureTaps context never called "
                f"their modules (recorded: {sorted(self._records)}); check the tap names and that the "
                "forward ran inside the `with` block"
            )
        for name in self.names:
            version = self._versions[name]
            if version is not None and self._records[name]._version != version:
                raise RuntimeError(
                    f"the output recorded for tap {name!r} was modified in place after its module ran "
                    "(e.g. by a following ReLU(inplace=True)), so it no longer holds the module output; "
                    "use FeatureTaps(..., clone=True) or tap the module after the in-place operation"
                )
        return {name: self._records[name] for name in self.names}

    @property
    def features(self) -> list[torch.Tensor]:
        """The recorded outputs, in the order of ``names``."""
        records = self.by_name
        return [records[name] for name in self.names]


def _restore_modes(model: nn.Module, modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.training = training


@torch.no_grad()
def probe_shapes(
    model: nn.Module, names: Sequence[str], imgsz: int = 64, module_paths: Mapping[str, str] | None = None
) -> list[torch.Size]:
    """Shapes of the tapped maps for one ``1×3×imgsz×imgsz`` zero image (eval mode, no grad).

    Eval mode keeps BatchNorm running statistics untouched; every submodule's train/eval flag is restored.
    """
    inner = unwrap_model(model)
    reference = next(iter(inner.parameters()), None)
    if reference is None:
        reference = next(iter(inner.buffers()), torch.empty(0))
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    images = torch.zeros(1, 3, imgsz, imgsz, device=reference.device, dtype=dtype)
    modes = {module: module.training for module in inner.modules()}
    taps = FeatureTaps(inner, names, module_paths=module_paths)
    try:
        inner.eval()
        with taps:
            inner(images)
    finally:
        _restore_modes(inner, modes)
    return [feature.shape for feature in taps.features]


def probe_channels(
    model: nn.Module, names: Sequence[str], imgsz: int = 64, module_paths: Mapping[str, str] | None = None
) -> list[int]:
    """Channel count of each tapped map (dim 1), from one tiny forward (see :func:`probe_shapes`)."""
    return [int(shape[1]) for shape in probe_shapes(model, names, imgsz=imgsz, module_paths=module_paths)]


def tap_geometry(model: nn.Module, names: Sequence[str], imgsz: int = 64) -> list[tuple[int, int]]:
    """``(channels, stride)`` of each tap: from the model's declared ``taps`` (``TapInfo``) where it has them,
    else (a plain module path) from one probe forward of a ``imgsz`` image (:func:`probe_shapes`)."""
    inner = unwrap_model(model)
    declared = getattr(inner, "taps", None) or {}
    geometry: dict[str, tuple[int, int]] = {}
    for name in names:
        info = declared.get(name)
        if info is not None and hasattr(info, "channels"):
            geometry[name] = (int(info.channels), int(info.stride))
    undeclared = [name for name in names if name not in geometry]
    if undeclared:
        for name, shape in zip(undeclared, probe_shapes(inner, undeclared, imgsz=imgsz), strict=True):
            geometry[name] = (int(shape[1]), max(1, imgsz // int(shape[-1])))
    return [geometry[name] for name in names]


def select_taps(model: nn.Module, taps: Sequence[str] | None = None, layers: int | None = None) -> list[str]:
    """Resolve the ``kd.taps`` / ``kd.layers`` config keys to a list of tap names for ``model``.

    * ``taps`` given: those names (checked against the model);
    * else ``layers`` = K given: the last K backbone taps (names starting with ``backbone.``, in the order the
      detector lists them, shallow to deep; Eq. 5-6 use the last K backbone maps);
    * else the detector's ``default_taps``.
    With both given, ``layers`` keeps the last K of ``taps``.
    """
    inner = unwrap_model(model)
    tap_map = getattr(inner, "taps", None) or {}
    if taps is not None:
        if isinstance(taps, str):
            raise ValueError(f"kd.taps must be a list of tap names or null, got the string {taps!r}")
        chosen = list(taps)
        _resolve(inner, chosen, None)  # KeyError with the valid names on a typo
    elif layers is not None:
        chosen = [name for name in tap_map if name.startswith("backbone.")]
    else:
        chosen = list(getattr(inner, "default_taps", []) or [])
        if not chosen:
            raise ValueError(
                f"{type(inner).__name__} has no default_taps; set kd.taps to a list of module paths"
            )
    if layers is not None:
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= len(chosen):
            raise ValueError(
                f"kd.layers must be an integer in [1, {len(chosen)}] (the number of maps in {chosen}), got {layers!r}"
            )
        chosen = chosen[-layers:]
    return chosen
