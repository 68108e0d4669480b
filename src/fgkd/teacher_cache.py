"""Content-addressed cache of trained teachers, shared by runs and sweeps.

A teacher is identified by a key: the SHA-256 of the canonical JSON of every setting that shapes it
(model, data and its version, preprocessing combo and parameters, recipe, epochs, imgsz, seed…).
An entry is a folder ``<root>/<label>-<key16>/`` holding ``teacher.ckpt``, ``metrics.json``,
``spec.json`` and a ``COMPLETE`` marker.

Atomicity and concurrency policy:

* the builder writes into a private temporary folder ``<entry>.tmp-<pid>-<n>``; only after it returned
  do we write the ``COMPLETE`` marker into it and ``os.replace`` it onto the entry path, so a crashed or
  killed build never leaves an entry that looks finished (an entry without ``COMPLETE`` is ignored);
* builds of the same key are serialized by an exclusive ``fcntl.flock`` on ``<entry>.lock``; the OS
  releases it when a holder dies, so a second run waits, then finds the finished entry and reuses it
  (one teacher is trained once, not once per run). Stale temporary folders are removed by the next
  holder of the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_NAME = "teacher.ckpt"
_tmp_counter = itertools.count()


def canonical_json(spec: Any) -> str:
    """Stable JSON (sorted keys, no whitespace variance); non-JSON values (Paths…) become strings."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


def spec_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


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
        metrics_file = self.path / "metrics.json"
        return json.loads(metrics_file.read_text()) if metrics_file.exists() else {}


class TeacherCache:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def entry_path(self, spec: dict[str, Any], label: str = "teacher") -> Path:
        safe_label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        return self.root / f"{safe_label}-{spec_key(spec)[:16]}"

    def lookup(self, spec: dict[str, Any], label: str = "teacher") -> CacheEntry | None:
        path = self.entry_path(spec, label)
        if is_complete(path):
            return CacheEntry(path, spec_key(spec), reused=True)
        return None

    @contextlib.contextmanager
    def _locked(self, path: Path, poll_s: float, timeout_s: float | None) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(path.name + ".lock")
        with open(lock_path, "a+") as handle:
            start = time.monotonic()
            announced = False
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not announced:
                        print(f"[teacher-cache] waiting for another run building {path.name} …", flush=True)
                        announced = True
                    if timeout_s is not None and time.monotonic() - start > timeout_s:
                        raise TimeoutError(
                            f"gave up after {timeout_s:.0f}s waiting for the teacher-cache lock {lock_path}; "
                            "another run is still training this teacher"
                        ) from None
                    time.sleep(poll_s)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def get_or_build(
        self,
        spec: dict[str, Any],
        build: Callable[[Path], None],
        label: str = "teacher",
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> CacheEntry:
        """Return the finished entry for ``spec``, calling ``build(tmp_dir)`` first when it is missing.

        ``build`` must write ``teacher.ckpt`` (and may write ``metrics.json`` and anything else) into the
        folder it is given. If it raises, nothing is published and the error propagates.
        """
        path = self.entry_path(spec, label)
        key = spec_key(spec)
        if is_complete(path):
            return CacheEntry(path, key, reused=True)
        with self._locked(path, poll_s, timeout_s):
            if is_complete(path):  # built by the run we waited for
                return CacheEntry(path, key, reused=True)
            for stale in path.parent.glob(path.name + ".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if path.exists():  # an unfinished entry from an older layout or a manual copy: never trusted
                shutil.rmtree(path)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{next(_tmp_counter)}")
            tmp.mkdir(parents=True)
            try:
                (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True, default=str))
                build(tmp)
                if not (tmp / CHECKPOINT_NAME).is_file():
                    raise RuntimeError(f"teacher build finished without writing {CHECKPOINT_NAME} into {tmp}")
                (tmp / COMPLETE_MARKER).write_text(key + "\n")
                os.replace(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return CacheEntry(path, key, reused=False)


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / CHECKPOINT_NAME).is_file()
