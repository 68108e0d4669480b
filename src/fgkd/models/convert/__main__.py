"""``python -m fgkd.models.convert SRC OUT.pt [--model NAME]`` (see fgkd.models.convert)."""

from __future__ import annotations

import argparse
import sys

from fgkd.models.convert import ConversionError, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fgkd.models.convert",
                                     description="Convert an official checkpoint into an fgkd detector file.")
    parser.add_argument("src", help="the official checkpoint (Ultralytics yolov8*.pt, rtdetr-l.pt; YOLOv5 v7.0 yolov5*.pt; "
                             "YOLOv6 0.4.0 yolov6*.pt; rtdetr_pytorch rtdetr_r18vd*/rtdetr_r50vd*.pth; a transformers RT-DETR folder)")
    parser.add_argument("out", help="the fgkd detector file to write (.pt)")
    parser.add_argument("--model", default=None, help="fgkd model name (default: read from the checkpoint)")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.out, args.model)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
