"""Dashboard media (fgkd.lit.media): an offline W&B run and a TensorBoard run hold the validation pictures, read
back from the files they wrote; W&B runs carry their role, sweep group and teacher."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from fgkd.pipeline import run

TINY = [
    "imgsz=64", "epochs=2", "batch_size=2", "num_workers=0",
    "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
    "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
]


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline W&B run file (W&B's LevelDB-style log: a 7-byte header, 32 KiB blocks
    of ``crc32 | length u16 | type u8 | data`` chunks; type 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    out, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            pending = data
        else:
            pending += data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def test_offline_wandb_run_holds_predictions_teacher_view_and_kd_similarity(compose_train, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("FGKD_SWEEP_GROUP", "results")  # what sweep.py sets for its runs
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_train(*TINY, f"paths.cache_dir={tmp_path / 'cache'}", "method=proposed_rb_sf", "logger=wandb",
                        "logger.media_every=1", "logger.media_images=2", output_dir=tmp_path / "run")
    run(cfg)
    records = wandb_records(tmp_path / "run")
    (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (meta.job_type, meta.run_group) == ("student", "results")
    config_keys = {u.key for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update}
    assert {"fgkd_role", "fgkd_config", "fgkd_teacher"} <= config_keys  # the student names its teacher
    media_steps = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        keys = {item.key or "/".join(item.nested_key) for item in record.history.item}
        if "val/predictions/filenames" in keys:
            # one call: predictions (with W&B boxes), X | X_M and every tap's similarity share one history row
            assert {"val/predictions/all_boxes", "val/teacher_view/filenames", "trainer/global_step"} <= keys
            assert {f"val/kd_cosine/backbone.{p}/filenames" for p in ("p3", "p4", "p5")} <= keys
            media_steps.append(record)
    assert len(media_steps) == 2  # media_every=1, two epochs
    media = next((tmp_path / "run").glob("wandb/offline-run-*/files/media"))
    groups = [json.loads(p.read_text()) for p in media.glob("metadata/boxes2D/val/predictions_*.boxes2D.json")]
    assert groups and all(g["class_labels"] == {"0": "corrosion", "1": "damaged_insulation", "2": "dent"} for g in groups)
    assert any(g["box_data"] and g["box_data"][0]["domain"] == "pixel" for g in groups)  # the ground-truth boxes
    # colour order: the picture W&B stored is the validation image itself, in RGB
    from fgkd.lit.media import take_sample
    from fgkd.tasks.detect import DetectTask
    from fgkd.visualize import to_uint8

    datamodule = DetectTask().build_datamodule(cfg, "student")
    datamodule.setup("fit")
    first = take_sample(next(iter(datamodule.val_dataloader())), 2)
    stored = sorted(media.glob("images/val/predictions_*.png"), key=lambda p: p.stat().st_mtime)
    pictures = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in stored[:2]]
    expected = [to_uint8(image) for image in first["images"]]
    assert any(np.array_equal(picture, expected[0]) for picture in pictures)


def test_tensorboard_gets_the_same_pictures_and_anomaly_runs_get_maps_and_histogram(compose_train, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def tags(run_dir: Path) -> set[str]:
        (events,) = run_dir.glob("tensorboard/**/events.out.tfevents.*")
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        return set(accumulator.Tags()["images"])

    cfg = compose_train(*TINY, f"paths.cache_dir={tmp_path / 'cache'}", "kd=none", "logger=tensorboard",
                        "logger.media_every=1", "logger.media_images=2", output_dir=tmp_path / "det")
    run(cfg)
    assert tags(tmp_path / "det") == {"val/predictions/0", "val/predictions/1"}  # no teacher: no X_M, no taps
    anomaly = compose_train("task=anomaly", "scale=smoke", "epochs=1", "batch_size=4", "num_workers=0",
                            "data.synthtex.categories=[woven]", "data.synthtex.size=64", "data.synthtex.num_train=8",
                            "data.synthtex.num_test_good=3", "data.synthtex.num_test_per_defect=2", "model=rd",
                            "model.encoder.name=resnet18", "model.oce_blocks=1", "logger=tensorboard",
                            "logger.media_every=1", "logger.media_images=2", output_dir=tmp_path / "ad")
    run(anomaly)
    assert {"val/anomaly_maps/0", "val/anomaly_maps/1", "val/score_histogram/0"} <= tags(tmp_path / "ad")


def test_sweep_table_and_figure_go_to_one_wandb_run_of_the_sweeps_group(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import importlib.util

    from fgkd import sweeps
    from fgkd.engine import METRICS_SCHEMA

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    exp = sweeps.load_experiment("results")
    five = {"map": 0.2, "map_50": 0.4, "mar_1": 0.1, "mar_10": 0.3, "mar_100": 0.35}
    for run_ in exp.runs("dev", seeds=2):
        d = run_.directory(tmp_path)
        d.mkdir(parents=True)
        test = {"metrics": {**five, "map": 0.2 + 0.01 * run_.seed}}
        (d / "metrics.json").write_text(json.dumps({"schema": METRICS_SCHEMA, "metrics": five, "test": test}))
    spec = importlib.util.spec_from_file_location("sweep_cli", Path(__file__).resolve().parents[1] / "sweep.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["results", "scale=dev", "seeds=2", "wandb=true", "--collect", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "results.png").is_file()
    records = wandb_records(tmp_path)
    (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (meta.job_type, meta.run_group) == ("sweep", "results")
    keys = {item.key or "/".join(item.nested_key) for r in records if r.WhichOneof("record_type") == "history"
            for item in r.history.item}
    assert {"table/_type", "results/_type"} <= keys
    (table,) = tmp_path.glob("wandb/offline-run-*/files/media/table/table_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:3] == ["Detector", "Method", "mAP"] and len(content["data"]) == 6
