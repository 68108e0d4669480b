"""Anomaly-detection models (reverse distillation): shared components and, per model, torch model, loss, map."""
