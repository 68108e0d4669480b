"""Knowledge distillation: feature taps (forward hooks), KD losses (cs mse mmd cwd kl) and channel adapters."""

from fgkd.distill.adapters import apply_adapters, build_adapters
from fgkd.distill.losses import KD_LOSSES, build_kd_loss
from fgkd.distill.taps import FeatureTaps, probe_channels, select_taps

__all__ = ["KD_LOSSES", "FeatureTaps", "apply_adapters", "build_adapters", "build_kd_loss", "probe_channels",
           "select_taps"]
