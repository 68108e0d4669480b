"""fgkd: foreground-aware knowledge distillation for industrial damage detection."""

__version__ = "0.1.0"
