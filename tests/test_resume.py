"""Requeue-safe resume: ``ckpt_path=auto`` continues a killed run from its own last.ckpt (else starts fresh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "imgsz=64", "batch_size=4", "num_workers=0", "logger=none",
    "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
    "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
]

# A Lightning callback (given on the command line) that logs "<fit folder name>:<epoch>" at each epoch start
# and kills the process without any cleanup (as a pre-emption or OOM kill would) at `epoch` while `marker`
# exists. The teacher's fit folder is named "run" (inside the teacher cache), the student's "student".
KILLER = '''
import os
from pathlib import Path
import lightning.pytorch as pl

class KillAtEpoch(pl.Callback):
    def __init__(self, epoch, marker, log):
        self.epoch, self.marker, self.log_path = int(epoch), marker, log

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and os.path.exists(self.marker):
            os._exit(17)
        with open(self.log_path, "a") as handle:
            handle.write(f"{Path(trainer.default_root_dir).name}:{trainer.current_epoch}\\n")
'''


def test_auto_resolves_to_the_runs_own_last_checkpoint_or_nothing(tmp_path):
    from fgkd.engine import resolve_ckpt_path

    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("auto", tmp_path) is None  # nothing to resume: a fresh start
    (tmp_path / "checkpoints").mkdir()
    torch.save({"epoch": 0}, tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert resolve_ckpt_path(str(tmp_path / "x.ckpt"), tmp_path) == tmp_path / "x.ckpt"  # explicit: as given


def test_validate_accepts_auto_and_single_stage_runs_pass_it_to_fit(compose_train, monkeypatch):
    from fgkd import pipeline
    from fgkd.config import ConfigError, validate

    validate(compose_train("ckpt_path=auto"))
    with pytest.raises(ConfigError, match="ckpt_path=auto"):
        validate(compose_train("ckpt_path=/nonexistent/last.ckpt"))
    seen = []
    monkeypatch.setattr(pipeline, "fit", lambda cfg, task, role, **kw: seen.append((role, kw["ckpt_path"])))
    pipeline.run(compose_train("ckpt_path=auto", "kd=none"))
    pipeline.run(compose_train("ckpt_path=auto", "stage=teacher", "preprocess=rb"))
    assert seen == [("base", "auto"), ("teacher", "auto")]


def test_killed_pipeline_run_resumes_its_student_from_last_ckpt(tmp_path, tiny_synthpipes):
    """Through train.py: the student is killed at the start of its 2nd epoch; the same command again reuses
    the cached teacher, continues the student at epoch 1 (epoch 0 is not trained twice) and finishes."""
    (tmp_path / "killer.py").write_text(KILLER)
    marker, epochs_log, run_dir = tmp_path / "kill", tmp_path / "epochs.log", tmp_path / "kd_run"
    marker.write_text("1")
    command = [sys.executable, str(REPO_ROOT / "train.py"), *TINY, "kd=cs", "preprocess=rb", "alpha=0.5",
               "epochs=2", "teacher.epochs=1", "ckpt_path=auto", f"hydra.run.dir={run_dir}",
               "+callbacks.killer._target_=killer.KillAtEpoch", "+callbacks.killer.epoch=1",
               f"+callbacks.killer.marker={marker}", f"+callbacks.killer.log={epochs_log}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 17, first.stdout[-3000:] + first.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # the student's, at the top of the run (one layout)
    assert not (run_dir / "metrics.json").exists()
    assert epochs_log.read_text().split() == ["run:0", "kd_run:0"]  # the teacher (in the cache), the student

    marker.unlink()
    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from" in second.stdout and "reusing the cached teacher" in second.stdout
    assert epochs_log.read_text().split() == ["run:0", "kd_run:0", "kd_run:1"]  # resumed, not restarted
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert payload["teacher"]["reused"] is True and payload["role"] == "student"
    assert [record["epoch"] for record in payload["history"]] == [0, 1]  # epoch 0 kept from the killed run
    assert set(payload["metrics"]) == {"map", "map_50", "mar_1", "mar_10", "mar_100"}


def test_last_checkpoint_follows_every_epoch_not_only_the_best(compose_train, tmp_path):
    """Resume must continue from the latest epoch: last.ckpt is written after every epoch, even when val/map
    does not improve (Lightning's save_last alone lags at the best epoch)."""
    import torch

    from fgkd import pipeline

    result = pipeline.run(compose_train(*TINY, "kd=none", "epochs=3", output_dir=tmp_path / "run"))
    last = torch.load(result.last_ckpt, map_location="cpu", weights_only=False)
    assert result.last_ckpt == (tmp_path / "run" / "checkpoints" / "last.ckpt").resolve()
    assert last["epoch"] == 2
    assert result.best_ckpt is not None and result.best_ckpt.name == "best.ckpt"


@pytest.mark.parametrize(("signum", "code", "what"), [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")])
def test_a_stopped_run_saves_progress_and_exits_non_zero(tmp_path, tiny_synthpipes, signum, code, what):
    """A scheduler's SIGTERM ended the run with exit code 0 (as if finished), Ctrl-C with 1."""
    import signal
    import time

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(REPO_ROOT / "train.py"), "kd=none", "imgsz=64", "epochs=5000", "batch_size=2",
               "num_workers=0", "logger=none", "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read()[-2000:]
    proc.send_signal(getattr(signal, signum))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == code, out[-2000:]
    assert f"stopped by {what}" in out and "ckpt_path=auto" in out
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()


def test_the_first_ctrl_c_asks_the_trainer_to_stop_and_the_second_interrupts():
    """Ctrl-C under load could land where Python ignores KeyboardInterrupt (a run kept training in CI); the first
    one is now a stop request at the next batch boundary, the second the usual KeyboardInterrupt."""
    import signal
    from types import SimpleNamespace

    from fgkd.lit.interrupt import stop_on_ctrl_c

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # background jobs inherit SIG_IGN
    before = signal.getsignal(signal.SIGINT)
    trainer = SimpleNamespace(world_size=1, should_stop=False)
    with stop_on_ctrl_c(trainer) as request:
        signal.raise_signal(signal.SIGINT)
        assert request.requested and trainer.should_stop
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    spawned = SimpleNamespace(world_size=2, should_stop=False)
    with stop_on_ctrl_c(spawned) as request, pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)  # DDP: Lightning's own handling, untouched
    assert not request.requested and signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, outer)
