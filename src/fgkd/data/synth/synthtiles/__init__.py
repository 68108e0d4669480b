"""SynthTiles: the embedded magnetic-tile-like anomaly dataset (MTD layout; blowholes, breaks, cracks, fray, uneven)."""

from fgkd.data.synth.synthtiles.render import DEFECTS, NORMAL
from fgkd.data.synth.synthtiles.store import TRAIN_LIST, SynthTilesSettings, dataset_dir, ensure_dataset

__all__ = ["DEFECTS", "NORMAL", "TRAIN_LIST", "SynthTilesSettings", "dataset_dir", "ensure_dataset"]
