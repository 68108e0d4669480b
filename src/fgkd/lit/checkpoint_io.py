"""Checkpoint files that survive a full disk or a kill: written beside their destination, fsync'ed, renamed.

Lightning's default ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in
the system temp folder, so the final move is a copy across file systems: a disk that fills during it leaves a
truncated ``best.ckpt``/``last.ckpt`` under its final name, and overwriting ``last.ckpt`` destroys the good one.
:class:`AtomicCheckpointIO` writes with :func:`fgkd.io.atomic_save` instead (the earlier file stays intact
until the new one is complete; the error names the path). :func:`loadable_checkpoint` checks a checkpoint
before a resume and picks the newest readable one otherwise.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fgkd.io import atomic_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_save(path, lambda handle: torch.save(checkpoint, handle))


def is_readable_checkpoint(path: str | os.PathLike[str]) -> bool:
    """A complete ``torch.save`` zip archive (every member's CRC checked; nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def loadable_checkpoint(path: Path) -> Path | None:
    """``path`` when it is readable, else the newest readable ``*.ckpt`` beside it (with a message), else None."""
    if is_readable_checkpoint(path):
        return path
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=lambda p: p.stat().st_mtime, reverse=True)
    for other in others:
        if is_readable_checkpoint(other):
            print(f"{path} is damaged (truncated or corrupt: a full disk or a kill while it was written); "
                  f"resuming from {other} instead", flush=True)
            return other
    print(f"{path} is damaged and no other readable checkpoint is in {path.parent}; starting this fit afresh",
          flush=True)
    return None
