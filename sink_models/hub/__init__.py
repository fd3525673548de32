"""Publishing to the Hub: stage, parity-check, push and tag the zoo's repos (publish), the parity check's fresh
process (parity) and the leaderboard records and tables (leaderboard, which the leaderboard Space also runs alone)."""

from ..evaluation.cards import ZOO_VERSION
from .publish import RESULTS_DATASET, HubError, parity_check, plan, push_folder, stage_model, tag_commit

__all__ = [
    "ZOO_VERSION",
    "RESULTS_DATASET",
    "HubError",
    "parity_check",
    "plan",
    "push_folder",
    "stage_model",
    "tag_commit",
]
