"""The names a config may choose from, importable without torch: config validation runs before any heavy import
(``python train.py alpha=-1`` fails in about a second), so the vocabularies it checks against live here and
the modules that implement them import them from here (tests assert that each list equals its registry).
"""

from __future__ import annotations

# -- detection: the teacher's view (Eq. 2-4) and the batches' views ---------------------------------------------
BG_TRANSFORMS = ("identity", "remove", "blur")
FG_TRANSFORMS = ("identity", "sharpen", "equalize")
#: combo name -> (T_bg, T_fg)
COMBOS: dict[str, tuple[str, str]] = {
    "none": ("identity", "identity"),
    "rb": ("remove", "identity"),
    "bb": ("blur", "identity"),
    "sf": ("identity", "sharpen"),
    "ef": ("identity", "equalize"),
    "rb_sf": ("remove", "sharpen"),
    "rb_ef": ("remove", "equalize"),
    "bb_sf": ("blur", "sharpen"),
    "bb_ef": ("blur", "equalize"),
}
#: view name -> batch key (fgkd.data.dataset.collate)
VIEW_KEYS: dict[str, str] = {"original": "images", "preprocessed": "teacher_images"}
VIEWS = tuple(VIEW_KEYS)
#: the feature-/logit-KD losses of fgkd.distill.losses (``kd.name``)
KD_NAMES = ("cs", "cwd", "kl", "mmd", "mse", "none")

# -- metrics ------------------------------------------------------------------------------------------------------
#: metric keys of torchmetrics' MeanAveragePrecision reported by the paper (Tables 1-5), in column order
FIVE_METRICS: list[str] = ["map", "map_50", "mar_1", "mar_10", "mar_100"]
#: the paper's column headers
DISPLAY_NAMES: dict[str, str] = {"map": "mAP", "map_50": "mAP50", "mar_1": "mAR1", "mar_10": "mAR10",
                                 "mar_100": "mAR100"}
ANOMALY_METRICS: list[str] = ["image_auroc", "pixel_auroc", "aupro"]
ANOMALY_DISPLAY_NAMES: dict[str, str] = {"image_auroc": "I-AUROC", "pixel_auroc": "P-AUROC", "aupro": "AUPRO"}

# -- anomaly data -------------------------------------------------------------------------------------------------
ANOMALY_LAYOUTS = ("synthtex", "mvtec", "btad", "mtd", "synthtiles")
#: layouts generated into the cache (no ``data.root``)
GENERATED_LAYOUTS = ("synthtex", "synthtiles")
RESIZE_MODES = ("square", "letterbox", "shortcrop")
