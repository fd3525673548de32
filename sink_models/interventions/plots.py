"""The paper's Figure 6 for an InterventionReport: one group of bars per edit, one bar per sink class (the mean over
heads of each head's mean effect), one dot per head."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..files import save_figure  # noqa: E402
from ..vocabulary import CLASSES  # noqa: E402
from .edits import EDITS_BY_NAME  # noqa: E402

CLASS_COLOURS = {"nop": "tab:blue", "broadcast": "tab:red", "other": "tab:gray", "all": "tab:green"}
CLASS_NAMES = {"nop": "NOP", "broadcast": "broadcast", "other": "other", "all": "all\n(layer edit;\ndots: layers)"}
EDIT_LABELS = {name: edit.label for name, edit in EDITS_BY_NAME.items()}
METRIC_LABELS = {
    "final_patch_relrms": "relative RMS change of the final patch tokens",
    "common_energy": "share of the change common to all patches",
    "donor_cosine": "cosine(mean patch change, donor - own)",
    "kl": "KL(logits before || after)",
    "top1_agree": "top-1 agreement with the unedited model",
    "top1_change": "top-1 accuracy change",
}
LOG_METRICS = ("final_patch_relrms",)  # spans 1e-9..1: a log axis, clipped at FLOOR
FLOOR = 1e-6
BOUNDS = {"common_energy": (0, 1), "donor_cosine": (-1, 1), "top1_agree": (0, 1), "top1_change": (-1, 1)}


def plot_interventions(report, path: str | Path, metric: str = "final_patch_relrms") -> Path:
    """Write the figure of `report`'s `metric` per edit and class to the PNG `path`; returns `path`."""
    table = report.by_class(metric)
    edits = [edit for edit in EDIT_LABELS if any(entry["edit"] == edit for entry in table)]
    figure, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(edits) + 2.5), 4.8), layout="constrained")
    log = metric in LOG_METRICS
    if log:
        axis.set_yscale("log")
    classes = _bars(axis, table, edits, log, np.random.default_rng(0))
    _axes(axis, metric, edits, log)
    if classes:
        handles = [Patch(color=CLASS_COLOURS[c], label=CLASS_NAMES[c]) for c in classes]
        # Outside the axes: inside, it hides a bar whichever corner it takes.
        axis.legend(
            handles=handles, title="sink class\n(dots: heads)", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1)
        )
    else:
        axis.text(0.5, 0.5, "no sink event: nothing was edited", ha="center", va="center", transform=axis.transAxes)
    axis.set_title(_title(report), fontsize=10)
    return save_figure(figure, path, dpi=120)


def _axes(axis, metric: str, edits: list[str], log: bool) -> None:
    """Edit labels on x; on y the metric, its floor (log) or its range (bounded metrics), a line at zero (linear)."""
    labels = [textwrap.fill(EDIT_LABELS[edit], 14, break_on_hyphens=False) for edit in edits]
    axis.set_xticks(range(len(edits)), labels, fontsize=9)
    axis.set_xlim(-0.6, max(len(edits), 1) - 0.4)
    if "register_mean" in edits and len(edits) > 1:  # the one edit of whole layers, not of a head: set apart
        axis.axvline(edits.index("register_mean") - 0.5, color="black", linestyle=":", linewidth=1)
    if log:
        axis.set_ylabel(f"{METRIC_LABELS[metric]}\n(log scale; values below {FLOOR:g} drawn at {FLOOR:g})")
        axis.set_ylim(FLOOR / 2, max(2.0, axis.get_ylim()[1]))
    else:
        axis.set_ylabel(METRIC_LABELS[metric])
        axis.axhline(0, color="black", linewidth=0.8)
        low, high = BOUNDS.get(metric, axis.get_ylim())
        axis.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    axis.grid(axis="y", alpha=0.3)


def _bars(axis, table: list[dict], edits: list[str], log: bool, rng) -> list[str]:
    """Per edit, its classes' bars side by side, a dot per head (a layer for layer-level edits); the classes drawn."""
    drawn = set()
    # One bar width for every group: a lone bar (register mean) as wide as one of a pair, not the whole slot.
    width = 0.8 / max((sum(entry["edit"] == edit for entry in table) for edit in edits), default=1)
    for x, edit in enumerate(edits):
        entries = [entry for entry in table if entry["edit"] == edit]
        for k, entry in enumerate(entries):
            centre = x + width * (k - (len(entries) - 1) / 2)
            colour = CLASS_COLOURS[entry["class"]]
            height = max(entry["mean"], FLOOR) if log else entry["mean"]
            bottom = FLOOR / 2 if log else 0.0  # a log axis has no zero: bars start at its bottom
            axis.bar(centre, height - bottom, width * 0.9, bottom=bottom, color=colour, alpha=0.55)
            dots = np.array([head["mean"] for head in entry["per_head"]])
            dots = np.maximum(dots, FLOOR) if log else dots
            jitter = rng.uniform(-0.25, 0.25, len(dots)) * width
            axis.scatter(centre + jitter, dots, s=14, color=colour, edgecolors="black", linewidths=0.5, zorder=3)
            drawn.add(entry["class"])
    return [name for name in CLASS_COLOURS if name in drawn]


def _title(report) -> str:
    """The model's name, and the heads with sink events, their events and the images."""
    name = str(report.model.get("name_or_path") or report.model.get("class", "model")).rstrip("/").split("/")[-1]
    events = [sum(head[c] for c in CLASSES) for head in report.heads]
    counts = f"{sum(e > 0 for e in events)} heads, {sum(events)} sink events, {report.settings['images']} images"
    return f"{name}: causal edits, one head at a time ({counts})"
