"""Tests for the shared plumbing: fgkd.io (atomic files, published folders, locks), fgkd.paths (outputs
follow the working directory) and the detector contract (declared loss reduction, logit-KD refusal)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fgkd import io, paths

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "metrics.json"
    io.atomic_write_json(target, {"map": 0.5})

    def fail(handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"no space left .* metrics.json"):
        io.atomic_save(target, fail)
    assert io.read_json(target) == {"map": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_publish_dir_marker_last_and_content_check(tmp_path):
    final = tmp_path / "entry"
    final.mkdir()
    (final / "stale.txt").write_text("unfinished")  # no marker: never trusted, replaced
    tmp = io.tmp_sibling(final)
    tmp.mkdir()
    (tmp / "weights").write_text("new")
    io.publish_dir(tmp, final, marker_text="k1")
    assert io.is_complete(final) and (final / "weights").read_text() == "new" and not (final / "stale.txt").exists()
    # a complete folder of *other* content is replaced unless keep_existing accepts it
    tmp2 = io.tmp_sibling(final)
    tmp2.mkdir()
    (tmp2 / "weights").write_text("newer")
    io.publish_dir(tmp2, final, marker_text="k2", keep_existing=lambda p: (p / io.COMPLETE_MARKER).read_text() == "k2")
    assert (final / "weights").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_file_lock_is_exclusive_across_processes(tmp_path):
    lock = tmp_path / "x.lock"
    code = ("import sys; from fgkd import io\n"
            "try:\n"
            "    with io.file_lock(sys.argv[1], poll_s=0.05, timeout_s=0.3): print('got')\n"
            "except TimeoutError as e: print('timeout', e)\n")
    with io.file_lock(lock):
        out = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("timeout") and str(lock) in out.stdout
    out = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "got"


def test_outputs_follow_the_working_directory(tmp_path, monkeypatch):
    for key in (paths.OUTPUTS_ENV, paths.ROOT_ENV, paths.CACHE_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.outputs_root() == tmp_path / "outputs" and paths.cache_root() == tmp_path / "outputs" / "cache"
    assert paths.project_root() == REPO_ROOT  # no checkout under tmp_path: the installed one runs train.py


def test_sweep_collect_from_another_directory_writes_there(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (paths.OUTPUTS_ENV, paths.ROOT_ENV)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "sweep.py"), "smoke_grid", "--collect"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "outputs" / "sweeps" / "smoke_grid" / "smoke" / "table.md").is_file()
    assert not (REPO_ROOT / "outputs" / "sweeps" / "smoke_grid" / "smoke" / "table.md").exists() or \
        (REPO_ROOT / "outputs" / "sweeps" / "smoke_grid" / "smoke" / "table.md").stat().st_mtime < \
        (tmp_path / "outputs" / "sweeps" / "smoke_grid" / "smoke" / "table.md").stat().st_mtime


def test_detectors_declare_loss_reduction_and_logits():
    from fgkd.models import build_detector, list_detectors
    from fgkd.models.detectors.base import Detector

    reductions = {name: build_detector(name, 3).loss_reduction for name in list_detectors()}
    # summed over the batch by YOLOv8 and YOLOv5 (the references return loss * batch size), a mean by YOLOv6
    # and a per-box mean by RT-DETR (its criterion divides by the number of ground-truth boxes)
    means = ("yolov6", "rtdetr")
    assert reductions == {name: ("mean" if name.startswith(means) else "sum") for name in list_detectors()}
    model = build_detector("yolov8n", 3).eval()
    raw = model(torch.zeros(1, 3, 64, 64))
    assert model.kd_logits(raw).shape == (1, 84, 3)
    with pytest.raises(NotImplementedError, match="kd=kl"):
        Detector().kd_logits(raw)


def test_pipeline_imports_nothing_that_imports_it_back_and_only_the_registry_imports_by_name():
    """The import direction of README "Architecture": train.py -> pipeline -> engine + tasks -> the rest."""
    import ast

    code = ("import sys, fgkd.pipeline, fgkd.tasks; fgkd.tasks.get_task('detect'); fgkd.tasks.get_task('anomaly'); "
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('fgkd'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"fgkd.engine", "fgkd.tasks.detect"} <= set(loaded)
    src = Path(__file__).resolve().parents[1] / "src"
    for name in loaded:
        path = src / (name.replace(".", "/") + ".py")
        path = path if path.is_file() else src / name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert name == "fgkd.pipeline" or "fgkd.pipeline" not in names, f"{name} imports fgkd.pipeline"
    for path in (src / "fgkd").rglob("*.py"):
        text = path.read_text()
        if path.name != "registry.py" and path.relative_to(src) != Path("fgkd/tasks/base.py"):  # lazy task modules
            assert "import_module" not in text and "inspect.signature" not in text, path
