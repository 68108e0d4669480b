"""The two-stage FAKD pipeline: teacher cache key, one teacher shared by students, metrics.json, given teachers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from fgkd.pipeline import run
from fgkd.tasks.detect import DetectTask
from fgkd.teacher_cache import spec_key

TINY = [
    "imgsz=64", "epochs=1", "batch_size=2", "num_workers=0",
    "data.synthpipes.num_images=8", "data.synthpipes.max_side=96",
    "trainer.limit_train_batches=2", "logger=none", "trainer.enable_progress_bar=false",
]


def _key(compose_train, *overrides):
    return spec_key(DetectTask().teacher_spec(compose_train("kd=cs", "preprocess=rb_sf", *overrides)))


def test_teacher_key_changes_with_every_setting_that_shapes_the_teacher(compose_train):
    base = _key(compose_train)
    for shaping in ["preprocess.sharpen_strength=2.0", "preprocess=rb", "model=yolov6n", "teacher.epochs=3",
                    "imgsz=128", "batch_size=4", "seed=1", "data.synthpipes.num_images=40",
                    "model.recipe.optimizer.weight_decay=0.001", "trainer.gradient_clip_val=1.0"]:
        assert _key(compose_train, shaping) != base, shaping
    # settings of the student stage and of logging do not: Table 5 trains ONE teacher for 12 students
    for neutral in ["kd=mse", "kd=mmd", "alpha=0.1", "logger=none", "trainer.enable_progress_bar=false",
                    "callbacks.model_checkpoint.save_top_k=2", "callbacks.last_checkpoint.every_n_epochs=2"]:
        assert _key(compose_train, neutral) == base, neutral
    # the student's epochs do not either, once the teacher's are fixed
    assert _key(compose_train, "epochs=3", "teacher.epochs=10") == _key(compose_train, "teacher.epochs=10")


def test_classical_feature_kd_teacher_ignores_the_preprocessing(compose_train):
    rb = _key(compose_train, "kd.teacher_view=original", "preprocess=rb")
    assert rb == _key(compose_train, "kd.teacher_view=original", "preprocess=bb_ef")
    assert rb != _key(compose_train)  # an original-view teacher is a different teacher


def test_preprocessed_teacher_needs_a_combo(compose_train):
    with pytest.raises(ValueError, match="preprocess=rb_sf"):
        run(compose_train(*TINY, "kd=cs", "preprocess=none"))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_teacher_serves_two_students_and_stays_unchanged(compose_train, tmp_path):
    own_cache = f"paths.cache_dir={tmp_path / 'cache'}"  # a warm shared $FGKD_CACHE may already hold this teacher
    first = run(compose_train(*TINY, own_cache, "kd=cs", "alpha=0.5", "preprocess=rb", output_dir=tmp_path / "cs"))
    assert not first.teacher_reused and first.teacher_path.is_file()
    teacher_hash = _sha(first.teacher_path)
    second = run(compose_train(*TINY, own_cache, "kd=mse", "alpha=0.1", "preprocess=rb", output_dir=tmp_path / "mse"))
    assert second.teacher_reused and second.teacher_path == first.teacher_path
    assert _sha(second.teacher_path) == teacher_hash  # distilling from it never writes it
    for folder in ("cs", "mse"):  # the run folder names the teacher it used (issue 11.4)
        linked = tmp_path / folder / "teacher" / "detector.pt"
        assert linked.is_file() and _sha(linked) == teacher_hash

    payload = json.loads(second.metrics_path.read_text())
    five = {"map", "map_50", "mar_1", "mar_10", "mar_100"}
    assert set(payload["metrics"]) == five and payload["role"] == "student" and payload["task"] == "detect"
    assert set(payload["teacher"]["metrics"]) == five
    run_info = payload["run"]
    assert run_info["kd"] == "mse" and run_info["alpha"] == 0.1 and run_info["evaluated_on"].startswith("original")
    assert payload["teacher"]["reused"] is True and payload["teacher"]["run"]["view"] == "preprocessed"
    teacher_cfg = json.loads((first.teacher_path.parent / "spec.json").read_text())
    assert teacher_cfg["preprocess"]["combo"] == "rb" and teacher_cfg["view"] == "preprocessed"

    teacher_state = torch.load(first.teacher_path, weights_only=False)["state_dict"]
    student_state = torch.load(second.student.artifact_path, weights_only=False)["state_dict"]
    assert teacher_state.keys() == student_state.keys()
    assert any(not torch.equal(teacher_state[k], student_state[k]) for k in teacher_state)

    # one run layout (issue 11.4): a KD run and a kd=none run have the same files at the top of their folder;
    # the KD run adds teacher/ (links to the teacher's model, metrics and curves)
    base = run(compose_train(*TINY, own_cache, "kd=none", output_dir=tmp_path / "base"))
    top = {"metrics.json", "detector.pt", "results.png", "val_history.json", "checkpoints/last.ckpt",
           "pr_curves.png", "confusion_matrix.png", "confusion_matrix.csv", "val_predictions.png"}  # + csv/ (logger)
    for folder in ("base", "cs", "mse"):
        present = {str(p.relative_to(tmp_path / folder)) for p in (tmp_path / folder).rglob("*")}
        assert top <= present, (folder, sorted(present))
        assert not (tmp_path / folder / "student").exists()
    assert {"teacher/detector.pt", "teacher/metrics.json", "teacher/results.png"} <= {
        str(p.relative_to(tmp_path / "cs")) for p in (tmp_path / "cs" / "teacher").iterdir()}
    assert not (tmp_path / "base" / "teacher").exists()
    assert json.loads((tmp_path / "cs" / "teacher" / "metrics.json").read_text())["role"] == "teacher"
    assert base.metrics_path == tmp_path / "base" / "metrics.json" and second.student.output_dir == tmp_path / "mse"
    history = json.loads(base.metrics_path.read_text())["history"]
    assert {"train/loss", "train/box", "train/cls"} <= set(history[-1]), sorted(history[-1])  # losses beside metrics
    student_history = json.loads(second.metrics_path.read_text())["history"]
    assert "train/kd" in student_history[-1], sorted(student_history[-1])


def test_given_heterogeneous_teacher_uses_connectors_outside_the_exported_student(compose_train, tmp_path):
    from fgkd.models import build_detector
    from fgkd.tasks.detect import save_detector

    teacher = build_detector("yolov8s", num_classes=3)
    path = save_detector(tmp_path / "teacher.pt", teacher, {"name": "yolov8s", "num_classes": 3, "kwargs": {}},
                         ["corrosion", "damaged_insulation", "dent"])
    result = run(compose_train(*TINY, "model=yolov8n", "kd=cs", "preprocess=rb", f"teacher.ckpt={path}",
                               output_dir=tmp_path / "hetero"))
    ckpt = torch.load(result.best_ckpt, weights_only=False)["state_dict"]
    assert any(k.startswith("distiller.connectors.") for k in ckpt)  # 1x1 convs n -> s channels train with the student
    exported = torch.load(result.student.artifact_path, weights_only=False)
    assert exported["detector"]["name"] == "yolov8n"
    assert not any("adapter" in k for k in exported["state_dict"])
    assert json.loads(result.metrics_path.read_text())["teacher"]["source"] == "teacher.ckpt"


def test_heterogeneous_teacher_chosen_by_config_is_trained_cached_and_distilled(compose_train, tmp_path):
    """model@teacher.model=yolov8s: the teacher stage trains a yolov8s (its key names it), the yolov8n student
    distils through 1x1 connectors sized from the declared taps, and the exported student is a yolov8n."""
    own_cache = f"paths.cache_dir={tmp_path / 'cache'}"
    result = run(compose_train(*TINY, own_cache, "model=yolov8n", "model@teacher.model=yolov8s", "kd=cs",
                               "preprocess=rb", output_dir=tmp_path / "hetero"))
    spec = json.loads((result.teacher_path.parent / "spec.json").read_text())
    assert spec["model"]["name"] == "yolov8s" and not result.teacher_reused
    teacher = torch.load(result.teacher_path, weights_only=False)
    assert teacher["detector"]["name"] == "yolov8s"
    ckpt = torch.load(result.best_ckpt, weights_only=False)["state_dict"]
    connectors = {k: v.shape for k, v in ckpt.items() if k.startswith("distiller.connectors.") and k.endswith("weight")}
    assert [tuple(shape[:2]) for shape in connectors.values()] == [(128, 64), (256, 128), (512, 256)]  # s <- n channels
    assert torch.load(result.student.artifact_path, weights_only=False)["detector"]["name"] == "yolov8n"
    payload = json.loads(result.metrics_path.read_text())
    assert payload["teacher"]["run"]["model"] == "yolov8s" and payload["run"]["model"] == "yolov8n"


def test_synthetic_pretraining_is_cached_per_architecture_and_initialises_the_run(compose_train, tmp_path, monkeypatch):
    from fgkd import pipeline
    from fgkd.tasks import get_task

    cfg = compose_train(*TINY, f"paths.cache_dir={tmp_path / 'cache'}", "kd=none", "pretrain=synthpipes",
                        "pretrain.epochs=1", "pretrain.data.num_images=16", output_dir=tmp_path / "run")
    task = get_task(cfg)
    part, spec, label = task.pretraining(cfg, "student")
    assert label == "pretrain-yolov8n" and part.data.synthpipes.seed == 1000 != cfg.data.synthpipes.seed
    assert (part.kd.name, part.preprocess.combo, part.epochs, part.model.weights) == ("none", "none", 1, None)
    first = pipeline.with_pretraining(cfg, task)
    weights = Path(first.model.weights)
    assert weights.is_file() and weights.parent.parent == tmp_path / "cache" / "pretrained"
    assert cfg.model.weights is None  # the caller's config is not changed in place
    # a second run of the same settings reuses the entry (no fit); other settings get their own entry
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("the cached pretraining was trained again"))
    assert pipeline.with_pretraining(cfg, task).model.weights == str(weights)
    other = compose_train(*TINY, f"paths.cache_dir={tmp_path / 'cache'}", "kd=none", "pretrain=synthpipes",
                          "pretrain.epochs=2", "pretrain.data.num_images=16")
    assert task.pretraining(other, "student")[1] != spec
    # the user's own weights win, and pretrain=none does nothing
    assert task.pretraining(compose_train(*TINY, "pretrain=synthpipes", f"model.weights={weights}"), "student") is None
    assert task.pretraining(compose_train(*TINY), "student") is None
    # the evaluation data's held-out test split does not change the pretrained model (none in the pretraining set)
    with_test = compose_train(*TINY, f"paths.cache_dir={tmp_path / 'cache'}", "kd=none", "pretrain=synthpipes",
                              "pretrain.epochs=1", "pretrain.data.num_images=16", "data.synthpipes.test_fraction=0.3")
    assert task.pretraining(with_test, "student")[1] == spec


def test_held_out_test_split_is_reported_for_student_and_teacher_on_both_views(compose_train, tmp_path):
    import lightning.pytorch as pl

    from fgkd.engine import read_metrics
    from fgkd.lit.detection import DetectionModule
    from fgkd.tasks.detect import load_detector

    cfg = compose_train(*TINY, f"paths.cache_dir={tmp_path / 'cache'}", "data.synthpipes.num_images=20",
                        "data.synthpipes.test_fraction=0.4", "kd=cs", "preprocess=rb_sf", output_dir=tmp_path / "run")
    result = run(cfg)
    payload = read_metrics(result.metrics_path)
    test = payload["test"]
    assert (test["split"], test["selected_on"], test["view"], list(test["views"])) == ("test", "val", "original", ["original"])
    assert test["images"] == 8  # round(0.4 * 20), disjoint from val (4) and train (8)
    assert set(test["metrics"]) == {"map", "map_50", "mar_1", "mar_10", "mar_100"}
    timing = payload["timing"]  # where the fit's wall time went (fgkd.lit.timing), printed as one line too
    assert set(timing["seconds"]) == {"train_steps", "data_wait", "validation", "checkpoints_logging_other",
                                      "setup", "export_and_test"}
    assert sum(timing["shares"].values()) == pytest.approx(1.0, abs=1e-3) and timing["seconds"]["train_steps"] > 0
    teacher_test = payload["teacher"]["test"]
    assert list(teacher_test["views"]) == ["preprocessed", "original"] and teacher_test["view"] == "preprocessed"
    # the reported numbers are the exported detector's on the test loader, as an independent validation computes them
    task = DetectTask()
    datamodule = task.build_datamodule(cfg, "student")
    datamodule.setup("fit")
    detector, _ = load_detector(result.output_dir / "detector.pt")
    module = DetectionModule(detector, class_names=datamodule.class_names)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=datamodule.test_dataloader(), verbose=False)
    assert trainer.callback_metrics["val/map_50"].item() == pytest.approx(test["metrics"]["map_50"], abs=1e-6)


def test_teacher_seed_gives_students_of_every_seed_one_teacher(compose_train, tmp_path):
    """teacher.seed: the key is the config the teacher is trained with (data.seed follows ${seed} -> the
    teacher's seed), so the student of seed 1 reuses the teacher of seed 0; without it each seed has its own."""
    own_cache = f"paths.cache_dir={tmp_path / 'cache'}"
    common = (*TINY, own_cache, "kd=cs", "preprocess=rb")
    first = run(compose_train(*common, "teacher.seed=0", "seed=0", output_dir=tmp_path / "s0"))
    second = run(compose_train(*common, "teacher.seed=0", "seed=1", output_dir=tmp_path / "s1"))
    assert not first.teacher_reused and second.teacher_reused and second.teacher_path == first.teacher_path
    own = run(compose_train(*common, "seed=1", output_dir=tmp_path / "own"))
    assert not own.teacher_reused and own.teacher_path != first.teacher_path


def test_time_breakdown_adds_the_fit_remainder_and_the_outside_parts():
    from fgkd.lit.timing import TimeBreakdown, breakdown, format_breakdown

    timer = TimeBreakdown()
    timer.seconds = {"train_steps": 80.0, "data_wait": 2.0, "validation": 8.0}
    timer.fit_seconds = 95.0  # 5 s inside trainer.fit outside steps, waits and validation
    timing = breakdown(timer, before_fit=3.0, after_fit=2.0)
    assert timing["total_s"] == 100.0 and timing["seconds"]["checkpoints_logging_other"] == 5.0
    assert timing["shares"]["train_steps"] == 0.8 and timing["shares"]["setup"] == 0.03
    assert format_breakdown("student", timing).startswith("[time] student fit 100 s: training steps 80.0 %")

