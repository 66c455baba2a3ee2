"""Batch image classification with torchvision models on Ray Data."""

__version__ = "0.1.0"
