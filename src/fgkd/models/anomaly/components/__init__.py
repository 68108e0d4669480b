"""Building blocks shared by the reverse-distillation models."""

from fgkd.models.anomaly.components.attention import MSCAM, ChannelContext, IterativeAFF

__all__ = ["MSCAM", "ChannelContext", "IterativeAFF"]
