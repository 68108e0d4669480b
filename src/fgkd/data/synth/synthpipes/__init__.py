"""SynthPipes: the embedded default dataset — insulated refinery pipes with damage, in cluttered scenes.

It models the problem of the FAKD paper (PDI images, Fig. 1): one or more insulated pipes (cylindrical
shading, cladding seams and bands, elbows, taper from perspective, occluders in front) in a cluttered
plant (steel structure, scaffolding, tanks, cabinets, valves, thin painted lines, textures, lighting,
shadows, haze, blur, noise). Damage boxes lie ON the pipe only (class 0 corrosion, 1
damaged_insulation, 2 dent); damage-like *distractors* (rust, holes, tears, dents) lie on background
objects and are unlabelled — exactly what the teacher's masked view X_M (Eq. 2-4) removes.

Output is the YOLO-with-masks layout of the contract (images/, labels/, masks/, data.yaml) plus a
``meta.jsonl`` sidecar (per-image sizes, pipe kinds, damage and distractor boxes in pixels).

Determinism: image i is drawn from ``np.random.SeedSequence([seed, 1, i])`` only (one spawned stream
per stage: scene, damages, distractors, photo effects), so the same settings give byte-identical
files (on the same platform/OpenCV build) and image i does not depend on ``num_images``; the
train/val split comes from ``default_rng([seed, 0])``.

Caching (``ensure_dataset``): the dataset lives in ``<cache_root>/synthpipes-<key>``, where key hashes
every generator setting and GENERATOR_VERSION, so a changed setting makes a new folder, never a mixed
one. Writing is atomic (:mod:`fgkd.io`: temp sibling + rename, ``COMPLETE`` marker written last; a folder
without a valid marker is never reused). Concurrency: processes on one host serialise on a file lock of
``.synthpipes-<key>.lock``; where locks are unavailable the first complete rename wins and a loser
discards its own copy.

CLI: ``python -m fgkd.data.synth.synthpipes --out DIR --num-images N --seed S [--max-side PX]
[--val-fraction F] [--full-size] [--workers K] [--overwrite]``.
"""

from fgkd.data.synth.synthpipes.cli import main
from fgkd.data.synth.synthpipes.render import image_size, render_sample, yolo_lines
from fgkd.data.synth.synthpipes.settings import (
    CLASS_NAMES,
    COMPLETE_MARKER,
    GENERATOR_VERSION,
    META_NAME,
    PDI_SIZES,
    SynthPipesSettings,
    SynthSample,
)
from fgkd.data.synth.synthpipes.store import (
    dataset_dir,
    default_cache_root,
    ensure_dataset,
    generate,
    load_meta,
    split_of,
)

__all__ = ["CLASS_NAMES", "COMPLETE_MARKER", "GENERATOR_VERSION", "META_NAME", "PDI_SIZES", "SynthPipesSettings", "SynthSample",
           "dataset_dir", "default_cache_root", "ensure_dataset", "generate", "image_size", "load_meta", "main",
           "render_sample", "split_of", "yolo_lines"]
