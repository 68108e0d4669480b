"""Checkpoints on a full disk: the earlier file survives, the error names the path, resume skips damaged files."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from fgkd.engine import resolve_ckpt_path
from fgkd.lit.checkpoint_io import AtomicCheckpointIO, is_readable_checkpoint


def test_a_disk_that_fills_while_last_ckpt_is_overwritten_keeps_the_good_file(tmp_path, monkeypatch):
    """Issue 15.7: the default IO moved a system-temp file across file systems and left a truncated ckpt."""
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "state_dict": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()

    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"no space left on the device holding .*checkpoints while writing last.ckpt"):
        io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert torch.load(path, weights_only=True)["epoch"] == 0


def test_resume_checks_the_checkpoint_and_falls_back_to_the_newest_readable_one(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 3}, folder / "best.ckpt")
    (folder / "last.ckpt").write_bytes((folder / "best.ckpt").read_bytes()[:40])  # truncated by a crash
    assert is_readable_checkpoint(folder / "best.ckpt") and not is_readable_checkpoint(folder / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path) == folder / "best.ckpt"
    assert "last.ckpt is damaged" in capsys.readouterr().out
    (folder / "best.ckpt").write_bytes(b"garbage")
    assert resolve_ckpt_path("auto", tmp_path) is None  # nothing readable: a fresh start, said so
    assert "starting this fit afresh" in capsys.readouterr().out
    io.save_checkpoint({"epoch": 4}, folder / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path) == folder / "last.ckpt"


def test_the_trainer_uses_the_atomic_checkpoint_io(compose_train):
    from fgkd.engine import build_trainer

    cfg = compose_train("kd=none", "logger=none")
    trainer, _ = build_trainer(cfg, Path(cfg.paths.output_dir))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_full_disk_in_the_image_cache_names_the_folder(tmp_path, monkeypatch):
    """Issue 15.12: `No space left on device` alone named no path."""
    from fgkd import io

    real_mkdir = Path.mkdir

    def full(self, *args, **kwargs):
        if "resized" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    target = tmp_path / "cache" / "resized" / "ab" / "entry.npz"
    with pytest.raises(OSError, match=r"no space left on the device holding .*resized/ab while writing entry.npz"):
        io.atomic_write(target, b"x")
