"""Teacher cache: keyed reuse, atomic publication, crash safety and concurrent builders."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from fgkd.teacher_cache import CHECKPOINT_NAME, COMPLETE_MARKER, TeacherCache, spec_key

SPEC = {"model": "yolov6n", "preprocess": {"combo": "rb_sf", "blur_kernel": 21}, "epochs": 3, "imgsz": 160}


def _writer(counter: list[int]):
    def build(tmp: Path) -> None:
        counter.append(1)
        (tmp / CHECKPOINT_NAME).write_bytes(b"weights")
        (tmp / "metrics.json").write_text('{"map": 0.5}')

    return build


def test_key_is_order_independent_and_sensitive_to_every_setting():
    reordered = {"imgsz": 160, "epochs": 3, "preprocess": {"blur_kernel": 21, "combo": "rb_sf"}, "model": "yolov6n"}
    assert spec_key(SPEC) == spec_key(reordered)
    changed = {**SPEC, "preprocess": {"combo": "rb_sf", "blur_kernel": 23}}
    assert spec_key(changed) != spec_key(SPEC)


def test_builds_once_then_reuses(tmp_path):
    cache, calls = TeacherCache(tmp_path), []
    first = cache.get_or_build(SPEC, _writer(calls), label="yolov6n-rb_sf")
    second = cache.get_or_build(SPEC, _writer(calls), label="yolov6n-rb_sf")
    assert calls == [1]
    assert (first.reused, second.reused) == (False, True)
    assert first.path == second.path and second.checkpoint.read_bytes() == b"weights"
    assert second.metrics == {"map": 0.5}
    assert (second.path / COMPLETE_MARKER).read_text().strip() == first.key
    assert cache.lookup(SPEC, "yolov6n-rb_sf") is not None
    other = cache.get_or_build({**SPEC, "seed": 1}, _writer(calls), label="yolov6n-rb_sf")
    assert calls == [1, 1] and other.path != first.path


def test_failed_build_publishes_nothing(tmp_path):
    cache = TeacherCache(tmp_path)

    def crash(tmp: Path) -> None:
        (tmp / CHECKPOINT_NAME).write_bytes(b"half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_build(SPEC, crash)
    assert cache.lookup(SPEC) is None
    assert not any((cache.entry_path(SPEC).name + ".tmp-") in p.name for p in tmp_path.iterdir())


def test_build_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match=CHECKPOINT_NAME):
        TeacherCache(tmp_path).get_or_build(SPEC, lambda tmp: None)
    assert TeacherCache(tmp_path).lookup(SPEC) is None


def _build_forever(root: str, started: str) -> None:
    def build(tmp: Path) -> None:
        (tmp / CHECKPOINT_NAME).write_bytes(b"partial")
        Path(started).write_text("1")
        time.sleep(600)

    TeacherCache(root).get_or_build(SPEC, build)


def test_killed_builder_leaves_no_finished_entry_and_releases_the_lock(tmp_path):
    started = tmp_path / "started"
    proc = mp.get_context("spawn").Process(target=_build_forever, args=(str(tmp_path / "c"), str(started)))
    proc.start()
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "builder did not start"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    cache, calls = TeacherCache(tmp_path / "c"), []
    assert cache.lookup(SPEC) is None  # the half-written checkpoint is not taken for a teacher
    entry = cache.get_or_build(SPEC, _writer(calls), timeout_s=30)
    assert calls == [1] and not entry.reused and entry.checkpoint.read_bytes() == b"weights"
    assert [p.name for p in (tmp_path / "c").iterdir() if ".tmp-" in p.name] == []


def _build_slowly(root: str, log: str) -> None:
    def build(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write("build\n")
        time.sleep(1.0)
        (tmp / CHECKPOINT_NAME).write_bytes(b"weights")

    TeacherCache(root).get_or_build(SPEC, build, poll_s=0.05)


def test_two_runs_asking_for_the_same_teacher_train_it_once(tmp_path):
    log = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_slowly, args=(str(tmp_path / "c"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("build") == 1
    assert TeacherCache(tmp_path / "c").lookup(SPEC).checkpoint.read_bytes() == b"weights"


def test_a_stopped_teacher_build_is_continued_by_the_next_run(tmp_path):
    """Issue 15.15: SIGTERM during the teacher stage deleted its in-progress entry (22 of 30 epochs lost)."""
    from fgkd.teacher_cache import TeacherCache

    cache = TeacherCache(tmp_path / "teachers")
    spec = {"model": "yolov8n", "epochs": 30}
    seen = []

    def interrupted(folder: Path) -> None:
        (folder / "run" / "checkpoints").mkdir(parents=True)
        (folder / "run" / "checkpoints" / "last.ckpt").write_text("epoch 22")
        raise KeyboardInterrupt  # what Lightning's SIGTERM handling and Ctrl-C raise

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(spec, interrupted, label="t")
    entry_path = cache.entry_path(spec, "t")
    assert not entry_path.exists()  # nothing half-built is published
    building = cache.building_path(entry_path)
    assert (building / "run" / "checkpoints" / "last.ckpt").read_text() == "epoch 22"

    def resumed(folder: Path) -> None:
        seen.append((folder / "run" / "checkpoints" / "last.ckpt").read_text())
        (folder / CHECKPOINT_NAME).write_text("teacher")

    entry = cache.get_or_build(spec, resumed, label="t")
    assert seen == ["epoch 22"] and not entry.reused and entry.checkpoint.read_text() == "teacher"
    assert not building.exists()
    other = {"model": "yolov8n", "epochs": 31}  # another teacher never continues this one's folder
    assert cache.building_path(cache.entry_path(other, "t")) != building
