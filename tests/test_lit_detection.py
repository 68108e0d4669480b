"""DetectionModule, recipes, EMA and detection metrics (fgkd.lit.*, fgkd.metrics.detection)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

NC = 3
S = 64
CLASS_NAMES = ["corrosion", "damaged_insulation", "dent"]


def _detectors_available() -> bool:
    try:
        from fgkd.models import list_detectors

        return "yolov8n" in list_detectors() and __import__("fgkd.models.detectors.losses")
    except Exception:  # noqa: BLE001
        return False


needs_yolo = pytest.mark.skipif(not _detectors_available(), reason="yolov8.py / losses.py not importable yet")


def make_batch(seed: int = 0, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, S, S, generator=g)
    targets = torch.tensor([[0, 1, 8, 8, 40, 40], [0, 2, 30, 20, 60, 44], [1, 0, 4, 10, 28, 58]], dtype=torch.float32)
    targets = targets[targets[:, 0] < batch]
    return {
        "images": images,
        "teacher_images": images.flip(-1) * 0.5,  # any tensor different from images
        "masks": torch.ones(batch, 1, S, S, dtype=torch.bool),
        "targets": targets,
        "paths": [f"img{i}.jpg" for i in range(batch)],
    }


def build(name: str = "yolov8n"):
    from fgkd.models import build_detector

    return build_detector(name, NC)


def teacher_with_stats() -> nn.Module:
    """A yolov8n whose BatchNorm running statistics are far from their init (mean 0, var 1)."""
    teacher = build()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in teacher.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
    return teacher


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], module: nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"teacher tensors changed: {changed[:5]}"


class BatchList(Dataset):
    """A dataset whose items are whole (pre-collated) batches; use with batch_size=None."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        return self.batches[index]


def loader(n: int = 2) -> DataLoader:
    return DataLoader(BatchList([make_batch(seed=i) for i in range(n)]), batch_size=None)


def quiet_trainer(tmp_path, **kwargs):
    import lightning.pytorch as pl

    defaults = dict(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


# -- training step ----------------------------------------------------------------------------------------
@needs_yolo
def test_training_step_overfits_one_batch():
    from fgkd.lit.detection import DetectionModule

    torch.manual_seed(0)
    module = DetectionModule(build(), class_names=CLASS_NAMES, batch_size=2)
    module.train()
    batch = make_batch()
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    weights_before = snapshot(module.student.head)
    losses = []
    for _ in range(12):
        loss, _ = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    assert any(not torch.equal(v, module.student.head.state_dict()[k]) for k, v in weights_before.items())


@needs_yolo
def test_task_parts_and_kd_terms_logged_and_alpha_scales_kd():
    from fgkd.lit.detection import DetectionModule

    torch.manual_seed(0)
    student, teacher = build(), teacher_with_stats()
    batch = make_batch()
    results = {}
    for alpha in (0.5, 1.0):
        module = DetectionModule(student, teacher=teacher, kd="cs", alpha=alpha, batch_size=2)
        module.train()
        total, logs = module.compute_loss(batch)
        results[alpha] = (total.detach(), logs)
        assert {"train/task", "train/box", "train/cls", "train/dfl", "train/kd", "train/loss"} <= logs.keys()
        assert {f"train/kd/{name}" for name in module.distiller.student_taps} <= logs.keys()
        per_tap = sum(logs[f"train/kd/{name}"] for name in module.distiller.student_taps)
        torch.testing.assert_close(per_tap, logs["train/kd"])
        # Eq. 9: total = task + alpha * sum_k d_k
        torch.testing.assert_close(total - logs["train/task"], alpha * logs["train/kd"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0.5][1]["train/task"], results[1.0][1]["train/task"])
    torch.testing.assert_close(results[0.5][1]["train/kd"], results[1.0][1]["train/kd"])
    assert results[0.5][1]["train/kd"] > 0


@needs_yolo
def test_base_training_has_no_teacher_and_no_kd_terms():
    from fgkd.lit.detection import DetectionModule

    module = DetectionModule(build(), batch_size=2)
    total, logs = module.compute_loss(make_batch())
    assert module.teacher is None and not module.distills
    assert not any(key.startswith("train/kd") for key in logs)
    torch.testing.assert_close(total.detach(), logs["train/task"])
    with pytest.raises(ValueError, match="needs a teacher"):
        DetectionModule(build(), kd="cs", alpha=0.5)


@needs_yolo
@pytest.mark.parametrize(("teacher_view", "key"), [("preprocessed", "teacher_images"), ("original", "images")])
def test_teacher_view_picks_the_batch_key(teacher_view, key):
    from fgkd.lit.detection import DetectionModule

    student, teacher = build(), build()
    seen = {}
    teacher.register_forward_pre_hook(lambda m, args: seen.__setitem__("teacher", args[0]))
    student.register_forward_pre_hook(lambda m, args: seen.__setitem__("student", args[0]))
    module = DetectionModule(student, teacher=teacher, kd="mse", alpha=1.0, teacher_view=teacher_view)
    batch = make_batch()
    module.compute_loss(batch)
    assert seen["teacher"] is batch[key]
    assert seen["student"] is batch["images"]


@needs_yolo
def test_view_preprocessed_trains_and_validates_on_xm_and_missing_key_is_explained():
    from fgkd.lit.detection import DetectionModule, batch_images

    student = build()
    seen = []
    student.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    module = DetectionModule(student, view="preprocessed", val_view="original")
    batch = make_batch()
    module.compute_loss(batch)
    module.eval()
    module.validation_step(batch, 0)
    assert seen[0] is batch["teacher_images"] and seen[1] is batch["images"]
    batch.pop("teacher_images")
    with pytest.raises(KeyError, match="preprocess="):
        batch_images(batch, "preprocessed")
    with pytest.raises(ValueError, match="allowed: original, preprocessed"):
        DetectionModule(build(), view="masked")


# -- frozen teacher ---------------------------------------------------------------------------------------
@needs_yolo
def test_frozen_teacher_is_unchanged_and_outside_optimizer_state_dict_and_ema(tmp_path):
    from fgkd.lit.callbacks import YoloEMA
    from fgkd.lit.detection import DetectionModule
    from fgkd.lit.optim import configure_recipe

    torch.manual_seed(0)
    teacher = teacher_with_stats()
    teacher.train()  # the module must freeze it, whatever mode it came in
    before = snapshot(teacher)
    module = DetectionModule(build(), teacher=teacher, kd="cs", alpha=0.5, class_names=CLASS_NAMES, batch_size=2)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in module.parameters()}
    assert not any(key.startswith(("teacher", "_teacher")) for key in module.state_dict())
    optimizer, _, _ = configure_recipe([module], module.recipe, num_classes=NC, batch_size=2, accumulate=1,
                                       epochs=1, batches_per_epoch=2)
    assert not teacher_ids & {id(p) for g in optimizer.param_groups for p in g["params"]}

    # Direct steps: training (student train mode, teacher must stay eval) then validation.
    module.train()
    assert not teacher.training
    loss, _ = module.compute_loss(make_batch())
    loss.backward()
    optimizer.step()
    module.eval()
    module.validation_step(make_batch(seed=1), 0)
    assert all(p.grad is None for p in teacher.parameters())
    assert_same_state(before, teacher)

    # Through a Trainer with EMA and checkpointing.
    import lightning.pytorch as pl

    ema = YoloEMA()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/map", mode="max", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[ema, checkpoint])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader(2), val_dataloaders=loader(1))
    assert_same_state(before, teacher)
    assert not teacher.training
    assert ema._average_model is not None
    assert ema._average_model.module.teacher is teacher  # shared by the EMA copy, never duplicated or averaged
    averaged_ids = {id(p) for p in ema._average_model.parameters()}
    assert not teacher_ids & averaged_ids
    for path in (checkpoint.best_model_path, checkpoint.last_model_path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        keys = list(state["state_dict"]) + list(state.get("current_model_state", {}))
        assert keys and all(key.startswith(("student.", "distiller.connectors.")) for key in keys), keys[:5]


@needs_yolo
def test_ema_weights_are_validated_and_saved(tmp_path):
    import lightning.pytorch as pl

    from fgkd.lit.callbacks import YoloEMA
    from fgkd.lit.detection import DetectionModule

    torch.manual_seed(0)
    module = DetectionModule(build(), class_names=CLASS_NAMES, batch_size=2)
    ema = YoloEMA(decay=0.9, tau=1.0)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[ema, checkpoint])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader(3), val_dataloaders=loader(1))
    saved = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=False)
    averaged = ema._average_model.module.state_dict()
    key = next(k for k in saved["state_dict"] if k.endswith("weight") and k.startswith("student.head"))
    torch.testing.assert_close(saved["state_dict"][key], averaged[key])
    assert not torch.equal(saved["state_dict"][key], saved["current_model_state"][key])
    # After fit the module holds the EMA weights (WeightAveraging copies them in on_train_end).
    torch.testing.assert_close(module.state_dict()[key], averaged[key])


def test_ramp_ema_decay_and_update():
    from fgkd.lit.callbacks import RampEMA

    ramp = RampEMA(decay=0.9999, tau=2000)
    assert ramp.decay_at(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ramp.decay_at(0) == 0.0
    averaged, current = torch.tensor([1.0]), torch.tensor([3.0])
    d = ramp.decay_at(2.0)  # num_averaged=1 -> updates=2
    torch.testing.assert_close(ramp(averaged, current, torch.tensor(1)), averaged * d + current * (1 - d))
    counts = torch.tensor([5])
    assert torch.equal(ramp(counts, torch.tensor([7]), 1), torch.tensor([7]))


def test_ramp_ema_foreach_update_equals_the_formula_over_many_steps():
    """``RampEMA.multi`` (what YoloEMA runs, in place, foreach) = the per-tensor formula, step after step, and an
    AveragedModel with it matches a hand-rolled EMA of a model whose weights change every step."""
    from torch.optim.swa_utils import AveragedModel

    from fgkd.lit.callbacks import RampEMA

    ramp = RampEMA(decay=0.9, tau=3.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    averaged = AveragedModel(model, multi_avg_fn=ramp.multi, use_buffers=True)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked += 1
        averaged.update_parameters(model)
        d = ramp.decay_at(step + 1.0)  # num_averaged = step: updates = step + 1 (the first update copies)
        for key, value in model.state_dict().items():
            if step == 0 or not value.is_floating_point():
                reference[key] = value.clone()
            else:
                reference[key] = reference[key] * d + value * (1 - d)
    for key, value in averaged.module.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=1e-6, atol=1e-6, msg=key)


# -- validation metrics -----------------------------------------------------------------------------------
@needs_yolo
def test_validation_logs_exactly_the_five_metrics_and_per_class_ap(tmp_path):
    from fgkd.lit.detection import DetectionModule
    from fgkd.metrics.detection import FIVE_METRICS

    module = DetectionModule(build(), class_names=CLASS_NAMES, batch_size=2)
    trainer = quiet_trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(module, dataloaders=loader(2), verbose=False)
    logged = set(trainer.callback_metrics)
    assert {f"val/{m}" for m in FIVE_METRICS} <= logged
    assert not {"val/map_75", "val/classes", "val/map_per_class", "val/mar_100_per_class"} & logged
    per_class = {k for k in logged if k.startswith("val/ap/")}
    assert per_class and per_class <= {f"val/ap/{n}" for n in CLASS_NAMES}
    assert module.best_val is not None and set(FIVE_METRICS) <= module.best_val.keys()


def test_summarize_split_targets_and_perfect_predictions():
    from fgkd.metrics.detection import DISPLAY_NAMES, FIVE_METRICS, build_map_metric, split_targets, summarize

    assert FIVE_METRICS == ["map", "map_50", "mar_1", "mar_10", "mar_100"]
    assert [DISPLAY_NAMES[m] for m in FIVE_METRICS] == ["mAP", "mAP50", "mAR1", "mAR10", "mAR100"]
    targets = torch.tensor([[0, 1, 10, 10, 50, 50], [1, 0, 5, 5, 20, 30], [1, 2, 30, 30, 60, 60.0]])
    per_image = split_targets(targets, batch_size=3)
    assert [len(t["labels"]) for t in per_image] == [1, 2, 0]
    assert per_image[1]["labels"].dtype == torch.long
    torch.testing.assert_close(per_image[1]["boxes"], targets[1:, 2:])
    metric = build_map_metric()
    preds = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in per_image]
    metric.update(preds, per_image)
    scalars = summarize(metric.compute(), CLASS_NAMES)
    for name in FIVE_METRICS:
        assert scalars[name] == pytest.approx(1.0), name
    assert {f"ap/{n}" for n in CLASS_NAMES} == {k for k in scalars if k.startswith("ap/")}
    with pytest.raises(ValueError, match="float\\[M, 6\\]"):
        split_targets(torch.zeros(3, 5), 1)


def test_format_table_and_atomic_json(tmp_path):
    from fgkd.metrics.detection import format_table

    table = format_table({"base": {"map": 0.25, "map_50": 0.5, "mar_1": 0.1, "mar_10": 0.2, "mar_100": 0.3}})
    header, _, row = table.splitlines()
    assert header.split()[1:] == ["mAP", "mAP50", "mAR1", "mAR10", "mAR100"]
    assert row.split() == ["base", "0.250", "0.500", "0.100", "0.200", "0.300"]
    from fgkd.io import atomic_write_json

    path = atomic_write_json(tmp_path / "sub" / "metrics.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary file left


# -- recipes ------------------------------------------------------------------------------------------------
def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=True))


def test_parameter_groups_no_decay_on_bias_and_norm():
    from fgkd.lit.optim import ResolvedOptimizer, build_optimizer

    net = _tiny_net()
    optimizer = build_optimizer([net], ResolvedOptimizer("sgd", 0.01, 0.9, 5e-4, 0.1))
    groups = {g["group"]: g for g in optimizer.param_groups}
    assert [id(p) for p in groups["weight"]["params"]] == [id(net[0].weight), id(net[2].weight)]
    assert {id(p) for p in groups["bias"]["params"]} == {id(net[1].bias), id(net[2].bias)}
    assert [id(p) for p in groups["norm"]["params"]] == [id(net[1].weight)]
    assert groups["weight"]["weight_decay"] == 5e-4
    assert groups["bias"]["weight_decay"] == groups["norm"]["weight_decay"] == 0.0


def test_yolov8_auto_recipe_adamw_lr_and_weight_decay_scaling():
    from fgkd.lit.optim import Recipe, accumulate_steps, auto_adamw_lr, resolve_optimizer

    assert auto_adamw_lr(1) == 0.002 and auto_adamw_lr(3) == 0.001429
    assert [accumulate_steps(b) for b in (8, 16, 32, 48, 64, 128)] == [8, 4, 2, 1, 1, 1]
    recipe = Recipe.from_config({"optimizer": {"name": "auto", "lr": 0.01, "momentum": 0.937, "weight_decay": 5e-4}})
    small = resolve_optimizer(recipe, num_classes=3, batch_size=16, accumulate=4, epochs=100, dataset_size=400)
    assert (small.name, small.lr, small.momentum, small.warmup_bias_lr) == ("adamw", 0.001429, 0.9, 0.0)
    assert small.weight_decay == pytest.approx(5e-4)  # 16 * 4 / 64 = 1
    big = resolve_optimizer(recipe, num_classes=3, batch_size=48, accumulate=1, epochs=100, dataset_size=640_064)
    assert (big.name, big.lr, big.momentum) == ("sgd", 0.01, 0.9)
    assert big.weight_decay == pytest.approx(5e-4 * 48 / 64)


def test_yolov6_finetune_recipe_lr_scaling_and_cosine():
    from fgkd.lit.optim import Recipe, lr_factor, resolve_optimizer

    recipe = Recipe.from_config({
        "optimizer": {"name": "sgd", "nesterov": True, "lr": 0.0032, "lr_reference_batch": 32, "momentum": 0.843,
                      "weight_decay": 3.6e-4, "nbs": 64},
        "scheduler": {"name": "cosine", "lrf": 0.12, "warmup_epochs": 2.0, "warmup_min_iters": 1000,
                      "warmup_momentum": 0.5, "warmup_bias_lr": 0.05},
        "close_mosaic": 15, "loss": {"iou_weight": 2.5}, "augment": {"mosaic": 1.0},
    })
    resolved = resolve_optimizer(recipe, num_classes=3, batch_size=16, accumulate=4, epochs=100, dataset_size=400)
    assert resolved.name == "sgd" and resolved.lr == pytest.approx(0.0016) and resolved.momentum == 0.843
    lf = lr_factor("cosine", 0.12, 100)
    assert lf(0) == pytest.approx(1.0) and lf(100) == pytest.approx(0.12) and lf(50) == pytest.approx(0.56)
    linear = lr_factor("linear", 0.01, 100)
    assert linear(0) == 1.0 and linear(100) == pytest.approx(0.01) and linear(50) == pytest.approx(0.505)
    with pytest.raises(ValueError, match="model.recipe.optimizer: unknown key"):
        Recipe.from_config({"optimizer": {"lr0": 0.1}})
    with pytest.raises(ValueError, match="allowed: linear, cosine"):
        Recipe.from_config({"scheduler": {"name": "step"}})


def test_warmup_schedule_lr_and_momentum():
    from fgkd.lit.optim import ResolvedOptimizer, WarmupEpochLR, build_optimizer, lr_factor, warmup_iterations

    assert warmup_iterations(3, 10, 100) == 100 and warmup_iterations(3, 50, 100) == 150
    assert warmup_iterations(0, 50, 100) == 0
    net = _tiny_net()
    optimizer = build_optimizer([net], ResolvedOptimizer("sgd", 0.01, 0.9, 5e-4, 0.1))
    lf = lr_factor("linear", 0.01, 10)
    # 10 batches per epoch, accumulate 2 -> one optimizer step = 2 batches; warm-up 20 batches = 10 steps
    scheduler = WarmupEpochLR(optimizer, lf, batches_per_epoch=10, accumulate=2, warmup_iters=20,
                              warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.9)
    lrs = lambda: {g["group"]: g["lr"] for g in optimizer.param_groups}  # noqa: E731
    assert lrs() == {"bias": pytest.approx(0.1), "weight": 0.0, "norm": 0.0}
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8)
    for _ in range(5):  # 5 steps = 10 batches: half-way, epoch 1
        optimizer.step()
        scheduler.step()
    target = 0.01 * lf(1)
    assert lrs()["weight"] == pytest.approx(target / 2)
    assert lrs()["bias"] == pytest.approx(0.1 + (target - 0.1) / 2)
    assert optimizer.param_groups[1]["momentum"] == pytest.approx(0.85)
    for _ in range(10):  # 30 batches: epoch 3, warm-up over
        optimizer.step()
        scheduler.step()
    assert lrs() == {k: pytest.approx(0.01 * lf(3)) for k in ("bias", "weight", "norm")}
    assert optimizer.param_groups[0]["momentum"] == 0.9
    state = scheduler.state_dict()
    assert "lf" not in state and state["last_epoch"] == 15


def test_schedule_position_counts_lightnings_partial_accumulation_step():
    from fgkd.lit.optim import WarmupEpochLR

    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    # 10 batches per epoch with accumulate 4: steps after batches 4, 8 and 10 (the epoch's last batch)
    scheduler = WarmupEpochLR(optimizer, lambda epoch: 1.0, batches_per_epoch=10, accumulate=4)
    positions = []
    for _ in range(7):
        positions.append(scheduler._position())
        optimizer.step()
        scheduler.step()
    assert positions == [(0, 0), (4, 0), (8, 0), (10, 1), (14, 1), (18, 1), (20, 2)]


@needs_yolo
def test_configure_optimizers_through_a_trainer_sets_accumulation_and_recipe(tmp_path):
    from fgkd.lit.detection import DetectionModule

    module = DetectionModule(build(), batch_size=2, recipe={"optimizer": {"name": "auto"}})
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0, accumulate_grad_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader(4))
    assert module.resolved_optimizer.name == "adamw" and module.resolved_optimizer.lr == 0.001429
    assert trainer.global_step == 2  # 4 batches / accumulate 2
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 2 and scheduler.batches_per_epoch == 4 and scheduler.accumulate == 2


@needs_yolo
@pytest.mark.parametrize(("name", "factor"), [("yolov8n", 2), ("yolov6n", 1)])
def test_sum_reduced_task_loss_is_scaled_by_world_size_under_ddp(name, factor):
    """DDP averages gradients: a task loss summed over images (YOLOv8) needs x world_size, a mean does not."""
    from types import SimpleNamespace

    from fgkd.lit.detection import DetectionModule, task_loss_reduction
    from fgkd.models import build_detector

    student, teacher = build_detector(name, NC), build_detector(name, NC)
    assert task_loss_reduction(student) == ("sum" if factor == 2 else "mean")
    module = DetectionModule(student, teacher=teacher, kd="mse", alpha=0.5)
    module._trainer = SimpleNamespace(world_size=2, current_epoch=0)  # what the step reads from a DDP trainer
    total, logs = module.compute_loss(make_batch())
    torch.testing.assert_close(total.detach(), factor * logs["train/task"] + 0.5 * logs["train/kd"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logs["train/loss"], logs["train/task"] + 0.5 * logs["train/kd"])  # logged: Eq. 9


def test_accumulated_batches_sum_their_gradients_like_the_references(monkeypatch):
    """Lightning divides the step loss by accumulate_grad_batches; the module undoes it so the gradient over
    an accumulation window is the SUM over its micro-batches (Ultralytics / YOLOv6 trainers)."""
    from types import SimpleNamespace

    from fgkd.lit.detection import DetectionModule

    torch.manual_seed(0)
    module = DetectionModule(build(), batch_size=2)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = make_batch()
    total, _ = module.compute_loss(batch)
    module._trainer = SimpleNamespace(accumulate_grad_batches=4, optimizers=[], current_epoch=0, world_size=1)
    returned = module.training_step(batch, 0)
    torch.testing.assert_close(returned / 4, total)  # Lightning's division then leaves exactly the step loss


@pytest.mark.parametrize("name", ["yolov6n", "yolov8n"])
def test_fused_frozen_teacher_gives_the_same_kd_loss(name):
    """kd.fuse_teacher: the teacher is re-parameterised once (no BatchNorm left) and distils the same."""
    import copy

    from fgkd.lit.detection import DetectionModule

    torch.manual_seed(0)
    teacher = build(name)
    for m in teacher.modules():  # non-trivial BN statistics, so folding them is actually exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    student = build(name)
    plain = DetectionModule(copy.deepcopy(student), teacher=copy.deepcopy(teacher), kd="cs", alpha=1.0)
    fused = DetectionModule(copy.deepcopy(student), teacher=copy.deepcopy(teacher), kd="cs", alpha=1.0,
                            fuse_teacher=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.teacher.modules())
    assert not any(p.requires_grad for p in fused.teacher.parameters()) and not fused.teacher.training
    batch = make_batch()
    _, logs_plain = plain.compute_loss(batch)
    _, logs_fused = fused.compute_loss(batch)
    torch.testing.assert_close(logs_fused["train/kd"], logs_plain["train/kd"], rtol=1e-4, atol=1e-5)


def test_validation_postprocess_is_multi_label_like_the_reference_validator():
    """Issue 15.5: validation kept one class per anchor; Ultralytics' validator keeps every class above conf."""
    from fgkd.lit.detection import DetectionModule
    from fgkd.models.detectors.base import build_detector
    from fgkd.models.detectors.ops import postprocess

    detector = build_detector("yolov8n", 2).eval()
    module = DetectionModule(detector, class_names=["a", "b"])
    assert module.postprocess_kwargs["multi_label"] is True
    with torch.no_grad():
        raw = detector(torch.zeros(1, 3, 64, 64))
    raw = {**raw, "cls": torch.full_like(raw["cls"], -10.0)}
    raw["cls"][0, 0, :] = 2.0  # one anchor, both classes confident
    single = postprocess(raw, conf=0.5)
    multi = detector.postprocess(raw, conf=0.5, multi_label=True)
    assert len(single[0]["labels"]) == 1 and sorted(multi[0]["labels"].tolist()) == [0, 1]
