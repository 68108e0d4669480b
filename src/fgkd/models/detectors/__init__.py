"""Detector families (YOLOv6, YOLOv8), their shared blocks, assigners, losses and post-processing."""
