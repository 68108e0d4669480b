"""BSDRD (paper 003): dual-student (struct + detail) reverse distillation and MD-GFLoss: torch model and loss."""

from fgkd.models.anomaly.bsdrd.torch_model import BSDRD

__all__ = ["BSDRD"]
