"""SynthTex: the embedded anomaly-detection dataset (5 textures, 2 objects, low-contrast defects, MVTec layout)."""

from fgkd.data.synth.synthtex.render import CATEGORIES, DEFECTS, OBJECTS, TEXTURES
from fgkd.data.synth.synthtex.store import SynthTexSettings, dataset_dir, ensure_dataset

__all__ = ["CATEGORIES", "DEFECTS", "OBJECTS", "TEXTURES", "SynthTexSettings", "dataset_dir", "ensure_dataset"]
