"""Mask-free inference: `python predict.py ckpt=outputs/runs/<run>/student/detector.pt source=imgs/`.

Thin Hydra entry point over fgkd.predict (options in conf/predict.yaml).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from fgkd.predict import predict

    for key in ("ckpt", "source"):
        if not cfg.get(key):
            raise SystemExit(f"predict.py needs {key}=… (e.g. ckpt=outputs/runs/<run>/student/detector.pt source=imgs/)")
    out = predict(cfg.ckpt, cfg.source, cfg.out_dir, imgsz=int(cfg.imgsz), conf=float(cfg.conf), iou=float(cfg.iou),
                  max_det=int(cfg.max_det), device=str(cfg.device), save_images=bool(cfg.save_images))
    print(f"predictions: {out / 'predictions.json'} (csv beside it), annotated images: {out / 'images'}")


if __name__ == "__main__":
    main()
