"""Sink diagnostics: tell adaptive-NOP sinks from broadcast sinks, per layer and head (docs/science.md sections 2-3)."""

from .diagnose import diagnose
from .families import SUPPORTED, family_of
from .metrics import Grid, Thresholds
from .report import SinkReport

__all__ = ["SUPPORTED", "Grid", "SinkReport", "Thresholds", "diagnose", "family_of"]
