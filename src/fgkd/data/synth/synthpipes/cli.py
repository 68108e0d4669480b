"""The SynthPipes command line: ``python -m fgkd.data.synth.synthpipes --out DIR --num-images N --seed S [...]``."""

from __future__ import annotations

import argparse

from fgkd.data.synth.synthpipes.settings import SynthPipesSettings
from fgkd.data.synth.synthpipes.store import generate


# --------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    defaults = SynthPipesSettings()
    parser = argparse.ArgumentParser(prog="python -m fgkd.data.synth.synthpipes", description="Generate a SynthPipes dataset (YOLO layout with pipe masks).")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--num-images", type=int, default=defaults.num_images)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--max-side", type=int, default=defaults.max_side, help="longer image side in px")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--full-size", action="store_true", help="write PDI camera resolution (up to 9504x6336)")
    parser.add_argument("--empty-fraction", type=float, default=defaults.empty_fraction)
    parser.add_argument("--max-pipes", type=int, default=defaults.max_pipes)
    parser.add_argument("--max-damages", type=int, default=defaults.max_damages)
    parser.add_argument("--max-distractors", type=int, default=defaults.max_distractors)
    parser.add_argument("--occlusion-prob", type=float, default=defaults.occlusion_prob)
    parser.add_argument("--elbow-prob", type=float, default=defaults.elbow_prob)
    parser.add_argument("--portrait-prob", type=float, default=defaults.portrait_prob)
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--workers", type=int, default=0, help="render in K processes (same output bytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out, args.num_images, args.seed, args.max_side, args.val_fraction,
                       overwrite=args.overwrite, workers=args.workers, progress=not args.quiet,
                       full_size=args.full_size, empty_fraction=args.empty_fraction, max_pipes=args.max_pipes,
                       max_damages=args.max_damages, max_distractors=args.max_distractors,
                       occlusion_prob=args.occlusion_prob, elbow_prob=args.elbow_prob,
                       portrait_prob=args.portrait_prob, jpeg_quality=args.jpeg_quality)
    except (ValueError, TypeError, FileExistsError) as err:
        parser.error(str(err))
    print(f"wrote {args.num_images} images to {out} (data.yaml, meta.jsonl)")
    return 0

