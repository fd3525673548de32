"""Which heads to edit: those with the most NOP and broadcast sink events, as the paper selects them."""

from ..diagnostics import SinkReport
from ..errors import InputError

TIES = ("paper", "lower")


def select_heads(
    report: SinkReport,
    per_class: int = 4,
    first_layer: int = 1,
    in_first_layers: int = 1,
    min_events: int = 1,
    ties: str = "paper",
) -> list[tuple[int, int]]:
    """For each of NOP and broadcast, the `per_class` heads with the most events of that class in layers >=
    `first_layer`, and the `in_first_layers` with the most below it (block-0 sinks sit on raw patch embeddings: the
    paper keeps them apart; it uses 16 and 4 at 4,096 images, with at least 50 events). Sorted (layer, head) pairs.

    Heads with equal counts at the cut: `ties="paper"` keeps the later (layer, head), as the paper's descending sort
    of (count, layer, head) does; `"lower"` keeps the earlier."""
    if ties not in TIES:
        raise InputError(f"ties: got {ties!r}; allowed: {', '.join(TIES)}.")
    later = 1 if ties == "paper" else -1
    chosen = set()
    for klass in ("nop", "broadcast"):
        rows = [row for row in report.heads if row[klass] >= min_events]
        for deep, count in ((True, per_class), (False, in_first_layers)):
            group = [row for row in rows if (row["layer"] >= first_layer) == deep]
            group.sort(key=lambda row: (-row[klass], -later * row["layer"], -later * row["head"]))
            chosen.update((row["layer"], row["head"]) for row in group[:count])
    return sorted(chosen)
