"""Reverse distillation: RD4AD (``rd``) and the two-teacher RD of paper 001 (``rd2t``): torch model and loss."""

from fgkd.models.anomaly.reverse_distillation.torch_model import ReverseDistillation

__all__ = ["ReverseDistillation"]
