"""Speed options keep the numbers (issue 12): with ``channels_last`` every model gives the same losses and
gradients (fp32 rounding) as in NCHW; ``compile`` is skipped with a reason when no compiler is there; the
engine applies what the config asks."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

from fgkd.lit.detection import DetectionModule
from fgkd.lit.speed import apply_speed_options, compiled_target, compiler_missing, nhwc_unsafe
from fgkd.models.registry import build_model
from fgkd.paths import project_root
from fgkd.tasks.detect import build_student

CONF = project_root() / "conf" / "model"


def detection_batch(imgsz: int = 64, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    targets = torch.tensor([[0, 0, 8, 8, 40, 30], [0, 1, 30, 20, 60, 60], [1, 2, 4, 10, 28, 50]], dtype=torch.float32)
    return {"images": images, "teacher_images": images.flip(-1), "targets": targets}


def model_cfg(model: str) -> dict:
    cfg = yaml.safe_load((CONF / f"{model}.yaml").read_text())
    cfg.pop("defaults", None)  # the recipe: not needed to build the network
    return cfg


def detection_module(model: str, kd: str, channels_last: bool) -> DetectionModule:
    cfg = model_cfg(model)
    torch.manual_seed(0)
    student, spec = build_student(cfg, 3)
    teacher = build_student(cfg, 3)[0] if kd != "none" else None
    module = DetectionModule(student, detector_spec=spec, teacher=teacher, kd=kd, alpha=0.5 if kd != "none" else 0.0)
    module.student.train()
    apply_speed_options(module, channels_last=channels_last)
    return module


def loss_and_grads(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    total, _ = module.compute_loss(batch)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def worst_gradient_error(result, reference) -> float:
    """The largest per-tensor gradient error of ``result`` against ``reference``, relative to the tensor's scale."""
    grads, ref = result[1], reference[1]
    assert grads.keys() == ref.keys()
    return max(((grads[k].double() - ref[k].double()).abs().max() / ref[k].double().abs().max().clamp_min(1e-6)).item()
               for k in ref)


def assert_same(nchw, nhwc, fp64, name: str) -> None:
    """The NHWC fp32 result is as close to the fp64 result as the NCHW fp32 one. At random init with 2 tiny
    images, BatchNorm over a few values amplifies fp32 rounding to ~1 % in some gradients whatever the memory
    format; a wrong NHWC computation would be far off (O(1)). The floor 1e-3: NHWC kernels round differently per
    CPU (on one 2-core Xeon here NCHW 0.8e-4, NHWC 2.5e-4 of the gradient scale), so 3 × NCHW alone is no bound."""
    torch.testing.assert_close(nhwc[0].double(), fp64[0].double(), rtol=1e-4, atol=1e-5, msg=f"{name}: loss changed")
    torch.testing.assert_close(nchw[0].double(), fp64[0].double(), rtol=1e-4, atol=1e-5)
    baseline = worst_gradient_error(nchw, fp64)
    assert worst_gradient_error(nhwc, fp64) <= max(3 * baseline, 1e-3), f"{name}: gradients changed"


def double(batch: dict) -> dict:
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize(("model", "kd"), [("yolov8n", "cs"), ("yolov6n", "cwd"), ("yolov5n", "mmd"),
                                           ("yolov8n", "kl"), ("yolov6n", "mse"), ("rtdetr_r18", "cs")])
def test_channels_last_gives_the_same_detection_loss_and_gradients(model, kd):
    batch = detection_batch()
    nchw = loss_and_grads(detection_module(model, kd, False), batch)
    fp64 = loss_and_grads(detection_module(model, kd, False).double(), double(batch))
    module = detection_module(model, kd, True)
    conv = next(m for m in module.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    teacher_conv = next(m for m in module.teacher.modules() if isinstance(m, torch.nn.Conv2d))
    assert teacher_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same(nchw, loss_and_grads(module, batch), fp64, f"{model} kd={kd}")


def test_channels_last_keeps_the_state_dict_loadable_into_a_plain_model():
    module = detection_module("yolov8n", "none", True)
    plain = build_student(model_cfg("yolov8n"), 3)[0]
    plain.load_state_dict(module.student.state_dict())
    x = torch.rand(1, 3, 64, 64)
    module.student.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), module.student(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "options"), [
    ("rd", {"encoder": {"name": "resnet18", "weights": None}}),
    ("bsdrd", {"encoder": {"name": "resnet18", "weights": None}}),
])
def test_channels_last_gives_the_same_anomaly_loss(name, options):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    results = []
    for channels_last, dtype in ((False, torch.float32), (True, torch.float32), (False, torch.float64)):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random encoder
            model = build_model(name, 1, **options)
        model.to(dtype).train()
        holder = torch.nn.Module()
        holder.model = model
        apply_speed_options(holder, channels_last=channels_last)
        teacher, student = model(images.to(dtype))
        loss = model.loss(teacher, student)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        model.eval()
        with torch.no_grad():
            results[-1][1]["__maps__"] = model.predict(images.to(dtype))[0]
    assert_same(*results, name)


def test_compile_is_skipped_with_the_reason_when_no_compiler_is_there(monkeypatch):
    import fgkd.lit.speed as speed

    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    assert "C++ compiler" in compiler_missing("cpu")
    module = detection_module("yolov8n", "none", False)
    notes = apply_speed_options(module, compile=True, device_type="cpu")
    assert notes == ["compile skipped (no C++ compiler (g++/clang++) on PATH; running eagerly)"]
    with pytest.raises(ValueError, match="compile='fast'"):
        apply_speed_options(module, compile="fast")
    assert compiled_target(module) is module.student


def test_the_convs_torch_crashes_on_stay_nchw():
    """torch 2.14.1's NHWC CPU backward of a 1×1 strided conv with 2-15 input channels corrupts the heap
    (YOLOv6's stem branch); such a conv keeps NCHW strides, and an NHWC input is made NCHW before it."""
    module = detection_module("yolov6n", "none", True)
    unsafe = [m for m in module.student.modules() if nhwc_unsafe(m)]
    assert len(unsafe) == 1 and unsafe[0].weight.stride() == (3, 1, 1, 1)
    seen = []
    unsafe[0].register_forward_hook(lambda m, args, out: seen.append(args[0].stride()))
    module.student(torch.rand(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert seen == [(3 * 64 * 64, 64 * 64, 64, 1)]


def test_the_engine_applies_the_configured_options(compose_train, tmp_path, capsys):
    """``channels_last`` (on by default) reaches the fitted network, and the fit's first line says so."""
    from fgkd.pipeline import run

    cfg = compose_train("model=yolov6n", "kd=none", "imgsz=64", "epochs=1", "batch_size=2", "num_workers=0",
                        "data.synthpipes.num_images=8", "data.synthpipes.max_side=96", "trainer.limit_train_batches=2",
                        "logger=none", f"paths.cache_dir={tmp_path / 'cache'}")
    assert cfg.channels_last is True and cfg.compile is False
    result = run(cfg)
    convs = [m for m in result.module.student.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous() for c in convs)
    assert "epochs (channels_last) ->" in capsys.readouterr().out
