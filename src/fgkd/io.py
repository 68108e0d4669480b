"""Atomic files and folders, file locks and canonical JSON: the one implementation every writer uses.

Users: the teacher cache, the dataset generators (SynthPipes), the decode-once image cache, sweeps and
the engine's ``metrics.json`` / artifacts.

* :func:`atomic_write` / :func:`atomic_write_json` / :func:`atomic_save`: a temporary file in the
  *destination* folder (so the final rename never crosses file systems), flushed and fsync'ed, then
  ``os.replace`` onto the final name. A reader sees the old file or the new one, never half of one; a
  failed write (disk full, kill) leaves the earlier file intact and no temporary behind.
* :func:`publish_dir`: a folder built under a temporary sibling gets its completion marker
  (:data:`COMPLETE_MARKER`) last and is then renamed onto its final path; :func:`is_complete` is the only
  test of "finished" (a folder without the marker is never trusted).
* :func:`file_lock`: an exclusive ``fcntl.flock`` on a lock file; the OS releases it when its holder dies.
  Where ``fcntl`` does not exist (Windows) it yields ``False`` and callers rely on "first complete rename
  wins".
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

#: the marker file a published folder gets last; its presence is what "complete" means
COMPLETE_MARKER = "COMPLETE"

_counter = itertools.count()


def tmp_sibling(path: str | os.PathLike[str], tag: str = "tmp") -> Path:
    """A unique hidden name next to ``path``: ``.<name>.<tag>-<pid>-<n>-<random>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}")


def _explain_os_error(err: OSError, path: Path) -> OSError:
    """The same error with the path in its message (``No space left on device`` alone names nothing)."""
    if err.errno == errno.ENOSPC:
        return OSError(err.errno, f"no space left on the device holding {path.parent} while writing {path.name}; "
                       "free space there or point the output elsewhere", str(path))
    return err


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it is fsync'ed and renamed onto ``path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a full disk can already refuse the folder
        raise _explain_os_error(err, path) from err
    tmp = tmp_sibling(path)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _explain_os_error(err, path) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], payload: Any, indent: int | None = 2) -> Path:
    """``payload`` as JSON (non-JSON values such as Paths become strings), written atomically."""
    return atomic_write(path, json.dumps(payload, indent=indent, default=str) + "\n")


def atomic_save(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> Path:
    """``writer(handle)`` fills a temporary binary file that then replaces ``path`` (e.g. ``torch.save``)."""
    with atomic_open(path, "wb") as handle:
        writer(handle)
    return Path(path)


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text())


def is_complete(folder: str | os.PathLike[str], marker: str = COMPLETE_MARKER) -> bool:
    return (Path(folder) / marker).is_file()


def publish_dir(tmp: str | os.PathLike[str], final: str | os.PathLike[str], marker_text: str = "",
                marker: str = COMPLETE_MARKER, keep_existing: Callable[[Path], bool] | None = None) -> Path:
    """Write the completion marker into ``tmp`` (last), then rename ``tmp`` onto ``final``.

    An existing ``final`` (unfinished, stale, or being replaced) is moved aside first and removed afterwards.
    ``keep_existing(final)``: True when a ``final`` that another process published meanwhile is the same
    content; that one then wins and ``tmp`` is removed (content-keyed caches).
    """
    tmp, final = Path(tmp), Path(final)
    atomic_write(tmp / marker, marker_text)

    def other_won() -> bool:
        return keep_existing is not None and is_complete(final, marker) and keep_existing(final)

    if other_won():
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    if final.exists():
        trash = tmp_sibling(final, "old")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if other_won():  # lost the race to an equal, complete folder
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        raise
    return final


def remove_stale(final: str | os.PathLike[str], tag: str = "tmp") -> None:
    """Remove temporary siblings of ``final`` left by crashed writers (call with the folder's lock held)."""
    final = Path(final)
    for stale in final.parent.glob(f".{final.name}.{tag}-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def file_lock(lock_path: str | os.PathLike[str], *, poll_s: float = 0.5, timeout_s: float | None = None,
              waiting_message: str | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path`` (created if needed); yields True, or False without ``fcntl``.

    ``waiting_message`` is printed once when another process holds the lock; ``timeout_s`` raises a
    TimeoutError naming the lock file.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waiting_message and not announced:
                    print(waiting_message, flush=True)
                    announced = True
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise TimeoutError(f"gave up after {timeout_s:.0f}s waiting for the lock {lock_path}; "
                                       "another process still holds it") from None
                time.sleep(poll_s)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def canonical_json(value: Any) -> str:
    """Stable JSON (sorted keys, no whitespace variance); non-JSON values (Paths…) become strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_key(value: Any) -> str:
    """SHA-256 of :func:`canonical_json`: the identity of a setting dict (teacher cache, sweeps)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
