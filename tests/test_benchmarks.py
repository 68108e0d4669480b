"""The benchmark scripts run end to end on tiny settings and end with their ``key=value`` line (issue 12);
the figures themselves are measured by hand (README "Benchmarks"), never asserted."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from fgkd.paths import project_root

sys.path.insert(0, str(project_root() / "benchmarks"))


def test_loader_benchmark_reads_paired_views_from_full_hd_jpegs(capsys):
    import loader

    ratio = loader.main(["--images", "4", "--src-size", "320x180", "--imgsz", "64", "--batch", "2",
                         "--workers", "0", "--epochs", "2", "--steps", "1", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"loader_over_step={ratio:.3f}" and ratio > 0
    assert any(line.startswith("loader_over_step_cold=") for line in lines)


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="ultralytics is installed here")
def test_vs_ultralytics_says_how_to_install_it_and_exits_cleanly(capsys):
    import vs_ultralytics

    assert vs_ultralytics.main(["--model", "yolov8n"]) is None
    out = capsys.readouterr().out
    assert "not an fgkd dependency" in out and "ultralytics==8.2.0" in out
