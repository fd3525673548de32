"""Figures of a SinkReport: events per layer x head by class, sink token types per layer, the diagnostic plane,
and the per-head inflow maps of one image and layer."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

CLASS_COLOURS = {"nop": "tab:blue", "broadcast": "tab:red", "other": "tab:gray"}
TYPE_COLOURS = {"cls": "tab:orange", "register": "tab:green", "patch": "tab:purple"}
# The report's figures and their captions, for the cards, the inspect report and the Spaces alike.
FIGURES = {
    "events_by_head.png": "Sink events per layer and head, by mechanism",
    "sink_types_by_layer.png": "Where the sinks sit, per layer (CLS / register / patch)",
    "diagnostic_plane.png": "The diagnostic plane: ratio_out vs stable rank, one dot per sink event",
}


def plot_report(report, folder: Path, layer: int | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    figures = (_events_by_head(report), _types_by_layer(report), _diagnostic_plane(report))
    paths = [_save(figure, folder / name) for figure, name in zip(figures, FIGURES, strict=True)]
    if report.attention is not None:
        layer = busiest_layer(report) if layer is None else layer
        paths.append(plot_attention(report, folder / f"attention_layer{layer}.png", layer))
    return paths


def busiest_layer(report) -> int:
    """The layer with the most sink events; the last one if none has any."""
    per_layer = [row["events"] for row in report.layers]
    return max(range(len(per_layer)), key=lambda i: (per_layer[i], i))


def plot_attention(report, path: Path, layer: int) -> Path:
    """The per-head inflow maps of `layer` on the report's kept image (`report.attention`), as a PNG at `path`."""
    return _save(_inflow_maps(report, layer), path)


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def _grid(report, key: str) -> np.ndarray:
    layers, heads = report.model["layers"], report.model["heads"]
    values = np.zeros((layers, heads))
    for row in report.heads:
        values[row["layer"], row["head"]] = row[key] / report.summary["images"]
    return values


def _events_by_head(report):
    size = (4 + 1.5 * report.model["heads"], 0.35 * report.model["layers"] + 2)
    figure, axes = plt.subplots(1, 3, figsize=size, layout="constrained")
    for axis, (name, colour) in zip(axes, CLASS_COLOURS.items(), strict=True):
        values = _grid(report, name)
        cmap = matplotlib.colors.LinearSegmentedColormap.from_list(name, ["white", colour])
        image = axis.imshow(values, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (row, col), value in np.ndenumerate(values):
            if value > 0:
                axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7)
        axis.set(title=f"{name} sinks per image", xlabel="head", ylabel="layer")
        axis.set_xticks(range(values.shape[1]))
        # Every layer labelled on short stacks, every other on deep ones; never matplotlib's half-step ticks.
        axis.set_yticks(range(0, values.shape[0], 1 if values.shape[0] <= 16 else 2))
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.suptitle(f"{report.model['class']}: sink events by layer and head ({report.summary['images']} images)")
    return figure


def _types_by_layer(report):
    figure, axis = plt.subplots(figsize=(max(5, 0.5 * report.model["layers"] + 2), 3.5), layout="constrained")
    layers = np.arange(report.model["layers"])
    bottom = np.zeros(len(layers))
    for name, colour in TYPE_COLOURS.items():
        values = np.array([row[name] for row in report.layers]) / report.summary["images"]
        axis.bar(layers, values, bottom=bottom, color=colour, label=name.upper() if name == "cls" else name)
        bottom += values
    axis.set(xlabel="layer", ylabel="sink events per image", title="Where the sinks sit, layer by layer")
    axis.set_xticks(layers)
    axis.legend(title="sink token")
    return figure


def _diagnostic_plane(report):
    thresholds = report.thresholds
    figure, axis = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for name, colour in CLASS_COLOURS.items():
        points = [(e["ratio_out"], e["stable_rank"]) for e in report.events if e["class"] == name]
        points = [(x, y) for x, y in points if x is not None and y is not None and x > 0]
        if points:
            x, y = zip(*points, strict=True)
            axis.scatter(x, y, s=12, alpha=0.7, color=colour, label=f"{name} ({len(points)})")
    axis.set_xscale("log")
    # Plain 1-2-5 labels: matplotlib's labelled minor ticks (2x10^-1, 3x10^-1, ...) run into each other.
    axis.xaxis.set_major_formatter(FuncFormatter(_one_two_five))
    axis.xaxis.set_minor_formatter(FuncFormatter(_one_two_five))
    low, high = axis.get_xlim()
    if high / low > 1e4:  # over more than four decades the 2 and 5 labels run into each other too
        axis.xaxis.set_minor_formatter(NullFormatter())
    axis.axvline(thresholds["nop_ratio"], color=CLASS_COLOURS["nop"], linestyle="--", linewidth=1)
    axis.axvline(thresholds["broadcast_ratio"], color=CLASS_COLOURS["broadcast"], linestyle="--", linewidth=1)
    axis.axhline(thresholds["broadcast_rank"], color=CLASS_COLOURS["broadcast"], linestyle=":", linewidth=1)
    axis.set(
        xlabel="ratio_out = ||u_s|| / mean ||u_j||",
        ylabel="stable rank of the head's update",
        title="Diagnostic plane: one dot per sink event",
    )
    if report.events:
        axis.legend()
    return figure


def _inflow_maps(report, layer: int):
    maps = report.attention
    prefix, (rows, cols) = maps["num_prefix_tokens"], maps["grid"]
    cls = maps.get("num_cls_tokens", 1)
    names = ["CLS"] if cls == 1 else [f"CLS{i}" for i in range(1, cls + 1)]
    names += [f"R{i}" for i in range(1, prefix - cls + 1)]
    inflow = np.array(maps["inflow"][layer], dtype=float)  # heads x tokens; None (an overflowed model's) is NaN
    heads = inflow.shape[0]
    figure, axes = plt.subplots(
        1,
        2 * heads,
        figsize=(3.6 * heads, 3.2),
        gridspec_kw={"width_ratios": [1, 7] * heads},
        squeeze=False,
        layout="constrained",
    )
    for head in range(heads):
        strip, grid = axes[0, 2 * head], axes[0, 2 * head + 1]
        defined = np.isfinite(inflow[head]).any()  # all NaN: drawn blank, no sink to mark
        vmax = np.nanmax(inflow[head]) if defined else 1.0
        if prefix:
            strip.imshow(inflow[head, :prefix, None], cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
            strip.set_yticks(range(prefix), names, fontsize=7)
            strip.set_xticks([])
        else:  # no CLS or register tokens (SigLIP): patches only
            strip.axis("off")
        image = grid.imshow(inflow[head, prefix:].reshape(rows, cols), cmap="viridis", vmin=0, vmax=vmax)
        grid.set(title=f"head {head}", xticks=[], yticks=[])
        sink = int(np.nanargmax(inflow[head])) if defined else -1
        if 0 <= sink < prefix:
            strip.scatter([0], [sink], marker="s", s=80, facecolors="none", edgecolors="red", linewidths=2)
        elif sink >= prefix:
            row, col = divmod(sink - prefix, cols)
            grid.scatter([col], [row], marker="s", s=80, facecolors="none", edgecolors="red", linewidths=2)
        figure.colorbar(image, ax=[strip, grid], shrink=0.8)
    figure.suptitle(
        f"Layer {layer}, image {maps['image']}: mean attention each token receives, per head (red: the sink)"
    )
    return figure


def _one_two_five(value: float, _position) -> str:
    """A log-axis tick label for 1, 2 and 5 times a power of ten ("0.2", "5"), none for the other ticks."""
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(mantissa, 6) in (1, 2, 5) else ""
