"""Causal interventions: edit one sink head at a time, attention held fixed, and measure what changes downstream
(docs/science.md sections 6 and 8; the paper's vit_causal), on every family the diagnostics support."""

from .edits import DEFAULT_EDITS, EDITS
from .intervene import intervene
from .report import InterventionReport
from .select import select_heads

__all__ = ["DEFAULT_EDITS", "EDITS", "InterventionReport", "intervene", "select_heads"]
