"""The dense probe's former module: its public names, now in sink_models.probes.dense, re-exported so that
`from sink_models.segmentation import DenseOptions, dense_probe` keeps working."""

from .probes.dense import DenseOptions, dense_probe

__all__ = ["DenseOptions", "dense_probe"]
