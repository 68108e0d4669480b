"""Inference without masks or labels: `python predict.py ckpt=<run>/detector.pt source=imgs/` (boxes) or
`python predict.py ckpt=<run>/anomaly.pt source=imgs/` (anomaly maps and image scores); `ckpt` may also be
the `.onnx` file `python -m fgkd.export` wrote, `source` an image, a folder, a .txt list or a video.

Thin Hydra entry point over fgkd.predict / fgkd.predict_anomaly (options in conf/predict.yaml); the kind of
model file picks the task.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from fgkd.config import ConfigError, validate_predict

    try:
        validate_predict(cfg)  # no torch import yet: a wrong path fails at once
    except ConfigError as err:
        _fail(err, cfg)
    from fgkd.data.formats.common import DataError
    from fgkd.data.imageio import BadImageError

    try:
        _predict(cfg)
    except (FileNotFoundError, ValueError, DataError, BadImageError) as err:
        _fail(err, cfg)


def _fail(err: Exception, cfg: DictConfig) -> None:
    """One line, exit 2, and no empty output folder left behind."""
    out = Path(str(cfg.out_dir))
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
    print(f"error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def _predict(cfg: DictConfig) -> None:
    from fgkd.predict import iter_images, predict
    from fgkd.predict_anomaly import is_anomaly_artifact, predict_anomaly

    if is_anomaly_artifact(cfg.ckpt):
        out = predict_anomaly(cfg.ckpt, iter_images(cfg.source), cfg.out_dir, imgsz=cfg.imgsz,
                              threshold=cfg.get("threshold"), pixel_threshold=cfg.get("pixel_threshold"),
                              device=str(cfg.device), save_images=bool(cfg.save_images),
                              batch_size=int(cfg.batch), vid_stride=int(cfg.vid_stride))
        print(f"scores: {out / 'scores.csv'} (and predictions.json), heat maps: {out / 'images'}")
        return
    out = predict(cfg.ckpt, cfg.source, cfg.out_dir, imgsz=int(cfg.imgsz) if cfg.imgsz else None, conf=float(cfg.conf),
                  iou=float(cfg.iou), max_det=int(cfg.max_det), device=str(cfg.device), save_images=bool(cfg.save_images),
                  batch_size=int(cfg.batch), vid_stride=int(cfg.vid_stride))
    print(f"predictions: {out / 'predictions.json'} (csv beside it), annotated images: {out / 'images'}")


if __name__ == "__main__":
    main()
