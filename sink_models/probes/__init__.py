"""Linear probes on a model's frozen features: per-layer patch classification (linear) and the dense probe, a
linear segmentation head scored by mIoU (dense)."""

from .dense import DenseOptions, dense_probe
from .linear import ProbeSettings, layer_features, linear_probe

__all__ = ["DenseOptions", "ProbeSettings", "dense_probe", "layer_features", "linear_probe"]
