"""Evaluation of a checkpoint: accuracy and the sink diagnostics in one pass (evaluate), the results JSON, and the
model cards (cards). Built on the core library; eval/run.py drives it."""

from .cards import ZOO_VERSION, render_card, write_card
from .evaluate import Checkpoint, EvalArguments, evaluate_checkpoint, load_checkpoint

__all__ = [
    "ZOO_VERSION",
    "Checkpoint",
    "EvalArguments",
    "evaluate_checkpoint",
    "load_checkpoint",
    "render_card",
    "write_card",
]
