"""Speed options of a fit, applied to the LightningModule before ``Trainer.fit`` (keys ``channels_last``, ``compile``).

* ``channels_last``: every conv weight (student, frozen teacher, connectors) in NHWC memory format. oneDNN on CPU
  and cuDNN under AMP run NHWC convolutions faster; activations follow the weights' format from the first conv on,
  so batches need no conversion. Measured with ``benchmarks/vs_ultralytics.py`` (YOLOv8n, 320 px, batch 8, one
  CPU thread): a training step ~11 % faster. The numbers stay the same to fp32 rounding (tests/test_speed.py).
  Memory format is a property of the tensors only: checkpoints, ``detector.pt`` and exports are unchanged.
  One exception stays NCHW: torch 2.14.1's CPU backward of a 1×1 *strided* conv with 2-15 input channels in NHWC
  corrupts the heap (seen here as "corrupted double-linked list" / segfaults; YOLOv6's stem has such a branch,
  fed the image), so those convs keep contiguous weights and inputs (:func:`nhwc_unsafe`).
* ``compile``: ``torch.compile`` of the trained model's forward (``nn.Module.compile``, in place, so hooks, taps and
  state-dict keys stay as they are). On CPU it needs a C++ compiler and took ~100 s for YOLOv8n's first step for
  ~3 % on top of channels_last, so it is off by default; on CUDA (Triton) it fuses BatchNorm/activation chains.
  Without a usable compiler the fit says so and runs eagerly.
"""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any

import torch
from torch import nn

from fgkd.config import COMPILE_MODES


def nhwc_unsafe(conv: nn.Module) -> bool:
    """A conv whose NHWC CPU backward crashes in torch 2.14.1: 1×1 kernel, stride > 1, 2-15 input channels."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and max(conv.stride) > 1
            and 1 < conv.in_channels < 16)


def _nchw_input(conv: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def to_channels_last(module: nn.Module) -> int:
    """``module`` in NHWC, except the convs :func:`nhwc_unsafe` names; returns how many stayed NCHW.

    Tensor by tensor rather than ``module.to(memory_format=...)``: a converted 1×1 weight cannot be turned back,
    since ``.contiguous()`` of a [C_out, C_in, 1, 1] tensor with NHWC strides counts as contiguous already and
    keeps the strides that send the conv down the crashing kernel."""
    kept = 0
    seen: set[int] = set()
    teacher = getattr(module, "teacher", None)  # DetectionModule's frozen teacher is not a registered child
    roots = [module] + ([teacher] if isinstance(teacher, nn.Module) else [])
    for root in roots:
        for sub in root.modules():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if nhwc_unsafe(sub):
                sub.register_forward_pre_hook(_nchw_input)  # an NHWC input alone selects the NHWC kernel
                kept += 1
                continue
            for tensor in list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False)):
                if tensor.dim() == 4:
                    tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return kept


def compiler_missing(device_type: str) -> str | None:
    """Why ``torch.compile`` (inductor) cannot build kernels for ``device_type`` here, or None when it can."""
    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") is not None else "triton is not installed"
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++/clang++) on PATH"
    return None


def compiled_target(module: nn.Module) -> nn.Module:
    """The network the fit trains: the detector (``student``) or the anomaly model (``model``)."""
    for name in ("student", "model"):
        target = getattr(module, name, None)
        if isinstance(target, nn.Module):
            return target
    raise TypeError(f"{type(module).__name__} has neither a .student nor a .model network to compile")


def apply_speed_options(module: nn.Module, *, channels_last: bool = False, compile: Any = False,
                        device_type: str = "cpu") -> list[str]:
    """Apply the options in place; returns one note per option applied (or skipped, with the reason)."""
    notes = []
    if channels_last:
        to_channels_last(module)
        notes.append("channels_last")
    if compile:
        mode = "default" if compile is True else str(compile)
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r}: use true, false or one of {', '.join(COMPILE_MODES)}")
        missing = compiler_missing(device_type)
        if missing:
            notes.append(f"compile skipped ({missing}; running eagerly)")
        else:
            compiled_target(module).compile(mode=mode)
            notes.append(f"torch.compile(mode={mode}; the first steps include compilation)")
    return notes
