"""Knowledge distillation: feature taps, the frozen teacher, connectors, KD losses (cs mse mmd cwd kl), the distiller."""

from fgkd.distill.connectors import apply_connectors, build_connectors
from fgkd.distill.distiller import Distiller
from fgkd.distill.frozen import FrozenTeacher
from fgkd.distill.losses import KD_LOSSES, build_kd_loss
from fgkd.distill.taps import FeatureTaps, probe_channels, select_taps, tap_geometry

__all__ = ["KD_LOSSES", "Distiller", "FeatureTaps", "FrozenTeacher", "apply_connectors", "build_connectors",
           "build_kd_loss", "probe_channels", "select_taps", "tap_geometry"]
