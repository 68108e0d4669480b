"""End-to-end learning: the real datamodule + DetectionModule + recipe must fit a few easy images.

Regression test for "base training does not learn" (val mAP 0.000 at every epoch of a default dev run): the
BatchNorm running statistics (momentum 0.03) kept most of their init (variance 1) for the ~150 batches of a
short run, so the *validated* (eval-mode) network output little more than its biases even where the
training-mode network fitted the data. Fixed by the running-statistics warm-up in fgkd.lit.batchnorm.
The images are validated as they are trained on (no augmentation, val split = train split), so mAP50 must
come close to 1; without the warm-up it stays near 0.
"""

from __future__ import annotations

import warnings

import numpy as np
from helpers import toydata

IMGSZ = 64
COLOURS = ((230, 40, 40), (40, 200, 40), (40, 80, 230))  # class 0 red, 1 green, 2 blue squares


def easy_samples(split: str) -> list[toydata.ToySample]:
    """Four 64x64 images: grey noise with 1-2 flat coloured squares (16-28 px); the colour is the class."""
    layouts = [
        [(0, 6, 8, 30, 32), (2, 36, 34, 58, 56)],
        [(1, 30, 4, 56, 30)],
        [(2, 4, 30, 24, 50), (1, 38, 40, 60, 62)],
        [(0, 20, 20, 46, 46)],
    ]
    rng = np.random.default_rng(0)
    samples = []
    for index, boxes in enumerate(layouts):
        image = rng.integers(90, 150, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
        mask = np.zeros((IMGSZ, IMGSZ), bool)
        for cls, x1, y1, x2, y2 in boxes:
            image[y1:y2, x1:x2] = COLOURS[cls]
            mask[y1:y2, x1:x2] = True
        samples.append(toydata.ToySample(f"s{index}", split, image, mask, [tuple(b) for b in boxes]))
    return samples


def fit_easy_images(tmp_path, model: str, epochs: int) -> dict:
    import lightning.pytorch as pl

    from fgkd.data.datamodule import DetectionDataModule
    from fgkd.lit.detection import DetectionModule
    from fgkd.models import build_detector

    root = toydata.write_yolo(tmp_path / "data", easy_samples("train") + easy_samples("val"))
    datamodule = DetectionDataModule(
        root=root, imgsz=IMGSZ, batch_size=4, num_workers=0, augment=None, cache=False, report=False, progress=False
    )
    # The dev recipe (conf/scale_preset/detect_dev.yaml): every batch an optimizer step, a short warm-up.
    recipe = {
        "optimizer": {"name": "adamw", "lr": "auto", "momentum": 0.9, "weight_decay": 5e-4, "nbs": 4},
        "scheduler": {"name": "linear", "lrf": 0.01, "warmup_epochs": 1, "warmup_min_iters": 3,
                      "warmup_momentum": 0.8, "warmup_bias_lr": 0.0},
    }
    pl.seed_everything(0, verbose=False)
    module = DetectionModule(build_detector(model, 3), recipe=recipe, batch_size=4, class_names=list(toydata.TOY_NAMES))
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs, gradient_clip_val=10.0, default_root_dir=str(tmp_path),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=datamodule)
    assert module.val_history, "no validation ran"
    return module.val_history[-1]


def test_yolov8n_fits_a_few_easy_images_and_validates_them(tmp_path):
    result = fit_easy_images(tmp_path, "yolov8n", epochs=40)
    assert result["map_50"] > 0.5, result


def test_yolov6n_fits_a_few_easy_images_and_validates_them(tmp_path):
    result = fit_easy_images(tmp_path, "yolov6n", epochs=40)
    assert result["map_50"] > 0.5, result


def test_batchnorm_warmup_averages_batches_then_hands_over_to_the_reference_momentum():
    import torch
    from torch import nn

    from fgkd.lit.batchnorm import BatchNormWarmup

    norm = nn.BatchNorm2d(1, momentum=0.03)
    warmup = BatchNormWarmup(norm)
    means = [2.0, 4.0, 6.0]
    for mean in means:
        warmup.step()
        norm(torch.full((2, 1, 2, 2), mean) + torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
    # momentum 1, 1/2, 1/3: the plain mean of the batch means, nothing left of the init value 0
    torch.testing.assert_close(norm.running_mean, torch.tensor([sum(means) / 3]))
    norm.num_batches_tracked.fill_(40)  # past 1 / 0.03 batches: the reference momentum again
    warmup.step()
    assert norm.momentum == 0.03 and warmup.done


def test_recalibrated_batchnorm_matches_the_statistics_of_the_given_batches():
    import torch
    from torch import nn

    from fgkd.lit.batchnorm import recalibrate_batchnorm

    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1, momentum=0.03)).eval()
    nn.init.ones_(model[0].weight)
    batches = [torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 5.0)]
    assert recalibrate_batchnorm(model, batches) == 1
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, torch.tensor([4.0]))
    assert not bn.training and bn.momentum == 0.03 and int(bn.num_batches_tracked) == 0
