"""Content-addressed cache of trained teachers, shared by runs and sweeps.

A teacher is identified by a key: the SHA-256 of the canonical JSON of every setting that shapes it
(model, data and its version, preprocessing combo and parameters, recipe, epochs, imgsz, seed…).
An entry is a folder ``<root>/<label>-<key16>/`` holding ``teacher.ckpt``, ``metrics.json``,
``spec.json`` and a ``COMPLETE`` marker.

Atomicity and concurrency policy:

* the builder writes into a private temporary folder (a hidden sibling of the entry); only after it
  returned is the ``COMPLETE`` marker written and the folder renamed onto the entry path (:func:`fgkd.io.publish_dir`), so a crashed or
  killed build never leaves an entry that looks finished (an entry without ``COMPLETE`` is ignored);
* builds of the same key are serialized by an exclusive lock on ``<entry>.lock`` (:func:`fgkd.io.file_lock`);
  the OS releases it when a holder dies, so a second run waits, then finds the finished entry and reuses it
  (one teacher is trained once, not once per run). Stale temporary folders are removed by the next
  holder of the lock.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgkd.io import (
    COMPLETE_MARKER,
    atomic_write_json,
    content_key,
    file_lock,
    publish_dir,
    read_json,
    remove_stale,
)
from fgkd.io import canonical_json as canonical_json  # re-exported: the key's serialisation

CHECKPOINT_NAME = "teacher.ckpt"
__all__ = ["CHECKPOINT_NAME", "COMPLETE_MARKER", "CacheEntry", "TeacherCache", "canonical_json", "dataset_fingerprint",
           "is_complete", "spec_key"]


def spec_key(spec: dict[str, Any]) -> str:
    return content_key(spec)


def dataset_fingerprint(root: str | Path) -> str:
    """A cheap version of a dataset on disk (part of a teacher's key): names, sizes and mtimes of its files."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    key: str
    reused: bool

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def metrics(self) -> dict[str, Any]:
        return read_json(self.path / "metrics.json", default={})


class TeacherCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry_path(self, spec: dict[str, Any], label: str = "teacher") -> Path:
        safe_label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        return self.root / f"{safe_label}-{spec_key(spec)[:16]}"

    def lookup(self, spec: dict[str, Any], label: str = "teacher") -> CacheEntry | None:
        path = self.entry_path(spec, label)
        if is_complete(path):
            return CacheEntry(path, spec_key(spec), reused=True)
        return None

    @staticmethod
    def building_path(path: Path) -> Path:
        return path.with_name(f".{path.name}.building")

    def get_or_build(
        self,
        spec: dict[str, Any],
        build: Callable[[Path], None],
        label: str = "teacher",
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> CacheEntry:
        """Return the finished entry for ``spec``, calling ``build(folder)`` first when it is missing.

        ``build`` must write ``teacher.ckpt`` (and may write ``metrics.json`` and anything else) into the
        folder it is given, continuing whatever an interrupted earlier build left there. If it raises,
        nothing is published, the folder is kept for the next attempt and the error propagates.
        """
        path = self.entry_path(spec, label)
        key = spec_key(spec)
        if is_complete(path):
            return CacheEntry(path, key, reused=True)
        self.root.mkdir(parents=True, exist_ok=True)
        waiting = f"[teacher-cache] waiting for another run building {path.name} …"
        with file_lock(path.with_name(path.name + ".lock"), poll_s=poll_s, timeout_s=timeout_s,
                       waiting_message=waiting):
            if is_complete(path):  # built by the run we waited for
                return CacheEntry(path, key, reused=True)
            remove_stale(path)
            if path.exists():  # an unfinished entry from an older layout or a manual copy: never trusted
                shutil.rmtree(path)
            tmp = self.building_path(path)
            if tmp.is_dir() and read_json(tmp / "spec.json") == spec:
                print(f"[teacher-cache] continuing the interrupted build in {tmp}", flush=True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                atomic_write_json(tmp / "spec.json", spec)
            try:
                build(tmp)
                if not (tmp / CHECKPOINT_NAME).is_file():
                    raise RuntimeError(f"teacher build finished without writing {CHECKPOINT_NAME} into {tmp}")
                publish_dir(tmp, path, marker_text=key + "\n")
            except BaseException:
                print(f"[teacher-cache] the teacher build stopped; its progress stays in {tmp} and the next run "
                      "that needs this teacher continues it", flush=True)
                raise
        return CacheEntry(path, key, reused=False)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / CHECKPOINT_NAME).is_file()
