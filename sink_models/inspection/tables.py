"""The tables and lines of `sink-models inspect`: the per-layer and sink-head tables as plain text or markdown, the
model and the summary in words, and the text the command prints."""

from collections.abc import Sequence

from ..diagnostics import SinkReport
from ..vocabulary import CLASSES, TOKEN_TYPES

LABELS = {"nop": "NOP", "cls": "CLS"}  # how the report writes a class or token type; others as they are
LAYER_HEADER = ("layer", "sinks", "NOP", "broadcast", "other", "CLS", "register", "patch", "norm max", "max/median")
HEAD_HEADER = (
    "layer",
    "head",
    "events",
    "class",
    "NOP",
    "broadcast",
    "other",
    "token",
    "ratio_out",
    "stable rank",
    "max inflow",
)


def layer_rows(report: SinkReport) -> list[list[str]]:
    """Per layer: sink events per image, by class and by token type, and the token norms of the layer's output."""
    n = report.summary["images"]
    rows = []
    for row in report.layers:
        per_image = [row[key] / n for key in ("events", *CLASSES, *TOKEN_TYPES)]
        norms = (row["token_norm_max"], row["token_norm_max_over_median"])
        rows.append([str(row["layer"]), *(num(value) for value in (*per_image, *norms))])
    return rows


def sink_head_rows(report: SinkReport) -> list[list[str]]:
    """The heads with sink events, most events first: counts over all images, dominant class and token type."""
    heads = sorted((h for h in report.heads if h["events"]), key=lambda h: (-h["events"], h["layer"], h["head"]))
    return [
        [
            str(h["layer"]),
            str(h["head"]),
            str(h["events"]),
            _dominant(h, CLASSES),
            *(str(h[c]) for c in CLASSES),
            _dominant(h, TOKEN_TYPES),
            num(h["ratio_out"], 3),
            num(h["stable_rank"], 3),
            num(h["max_inflow"], 3),
        ]
        for h in heads
    ]


def _dominant(row: dict, names: tuple[str, ...]) -> str:
    top = max(row.get(name, 0) for name in names)
    return "/".join(LABELS.get(name, name) for name in names if row.get(name, 0) == top)


def num(value: float | None, digits: int = 2) -> str:
    """A table cell: `value` to `digits` decimals, n/a for None (a median over no events)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def text_table(header: Sequence[str], rows: list[list[str]]) -> str:
    """A plain-text table, columns right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows])


def markdown_table(header: Sequence[str], rows: list[list[str]], left: Sequence[str] = ()) -> str:
    """A GitHub markdown table: the `left` columns (words) left-aligned, the others (numbers) right-aligned."""
    rules = (":---" if name in left else "---:" for name in header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rules) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def model_line(report: SinkReport) -> str:
    """The model in words: class, family, size, token layout, attention backend."""
    m = report.model
    if "num_cls_tokens" in m:  # the diagnostics tell CLS tokens from registers
        layout = f"{m['num_cls_tokens']} CLS + {m['num_register_tokens']} register tokens"
    else:
        layout = f"{m['num_prefix_tokens']} prefix tokens"
    family = m.get("family", m["model_type"])
    return (
        f"{m['class']} ({family}), {m['layers']} layers x {m['heads']} heads, {layout}, "
        f"attention {m['attn_implementation']}"
    )


def summary_lines(report: SinkReport) -> list[str]:
    """The summary in words: images, sinks per image by class, where the sinks sit."""
    s, inputs = report.summary, report.summary.get("inputs", {})
    first = s["excluding_first_layer"]
    share = s["sink_share"]
    skipped = inputs.get("skipped", [])
    return [
        f"images: {inputs.get('images_from', s['images'])}"
        + (f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else ""),
        f"sink events per image: {s['sinks_per_image']:.2f} (NOP {s['nop_per_image']:.2f}, broadcast "
        f"{s['broadcast_per_image']:.2f}, other {s['other_per_image']:.2f}); without layer 0: "
        f"{first['sinks_per_image']:.2f}",
        "sink share: " + ", ".join(f"{LABELS.get(t, t)} {share.get(t, 0.0):.1%}" for t in TOKEN_TYPES),
    ]


def summary_text(report: SinkReport) -> str:
    """What the command prints: the model, the summary and the per-layer table."""
    inputs = report.summary.get("inputs", {})
    head = f"model: {inputs.get('model', report.model['name_or_path'])}: {model_line(report)}"
    layers = text_table(LAYER_HEADER, layer_rows(report))
    return "\n".join([head, *summary_lines(report), "", "sink events per image, by layer:", layers])
