"""The report folder of `sink-models inspect`: report.json, heads.csv, the figures and report.md (title, summary,
per-layer table, sink heads, figures with captions, what the sink classes mean, the causal interventions if run, the
images used), with interventions.json and interventions.png when the interventions ran."""

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..diagnostics import SinkReport
from ..diagnostics.plots import FIGURES
from ..errors import InputError
from ..files import atomic_folder
from ..interventions import InterventionReport
from ..vocabulary import CLASSES, TOKEN_TYPES
from .causal import FIGURE, causal_markdown
from .tables import (
    HEAD_HEADER,
    LABELS,
    LAYER_HEADER,
    layer_rows,
    markdown_table,
    model_line,
    num,
    sink_head_rows,
)

MAX_HEAD_ROWS = 50  # report.md lists at most this many sink heads; heads.csv has them all


MARKER = ".sink-models-report.json"  # written last into every report folder: the files this tool wrote there


def check_out(folder: Path) -> None:
    """Refuse, before any work, an `out` that could hold anything this tool did not write: a file, the working folder
    or one above it, or a non-empty folder other than an earlier report whose marker lists every file in it."""
    where = str(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"out: {where!r} is a file; allowed: a new folder or an earlier report folder.")
    resolved, here = folder.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise InputError(f"out: {where!r} is the working folder or holds it; allowed: a new folder, e.g. 'report'.")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    written = _written_files(folder)
    if written is None:
        raise InputError(
            f"out: {where!r} exists and is not a report folder of sink-models inspect (no {MARKER}); it would be "
            "replaced: choose a new folder."
        )
    others = sorted(path.name for path in folder.iterdir() if path.name not in written | {MARKER})
    if others:
        raise InputError(
            f"out: {where!r} holds files this tool did not write ({', '.join(others[:5])}); they would be deleted: "
            "choose a new folder or move them out."
        )


def _written_files(folder: Path) -> set[str] | None:
    """The file names an earlier report's marker lists, or None without a readable marker."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    names = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    return set(names)


def write_report(report: SinkReport, folder: Path, interventions: InterventionReport | None = None) -> Path:
    """report.json, heads.csv, the figures and report.md into `folder`, written beside it and renamed into place;
    with `interventions`, interventions.json and (if anything was edited) interventions.png too. An earlier `folder`
    is replaced only if it is a report this tool wrote, holding nothing else (`check_out`)."""
    check_out(folder)
    with atomic_folder(folder) as staging:
        report.to_json(staging / "report.json")
        report.to_csv(staging / "heads.csv")
        figures = [Path(path).name for path in report.plot(staging)]
        if interventions is not None:
            interventions.to_json(staging / "interventions.json")
            if interventions.rows:
                interventions.plot(staging / FIGURE)
        (staging / "report.md").write_text(render_markdown(report, figures, interventions))
        files = sorted(path.name for path in staging.iterdir())
        (staging / MARKER).write_text(json.dumps({"written_by": "sink-models inspect", "files": files}) + "\n")
    return folder


def render_markdown(report: SinkReport, figures: Sequence[str], interventions: InterventionReport | None = None) -> str:
    """report.md: title, summary, per-layer table, sink heads, figures, what the classes mean, the causal
    interventions (if run), the images."""
    parts = [_md_title(report), _md_summary(report), _md_layers(report), _md_heads(report)]
    parts += [_md_figures(figures), _md_classes(report)]
    if interventions is not None:
        parts.append(causal_markdown(interventions, report.summary.get("inputs", {})))
    return "\n\n".join([*parts, _md_images(report)]) + "\n"


def _md_title(report: SinkReport) -> str:
    inputs = report.summary.get("inputs", {})
    model = inputs.get("model", report.model["name_or_path"])
    revision = inputs.get("revision")
    where = "a local folder" if os.path.isdir(model) else f"the Hub, revision `{revision or 'main (default)'}`"
    return (
        f"# Attention sinks of `{model}`\n\n"
        f"Model `{model}` from {where}: {model_line(report)}. "
        f"Images: {inputs.get('images_from', 'given by the caller')}. Made by `sink-models inspect`."
    )


def _md_summary(report: SinkReport) -> str:
    s = report.summary
    first, share = s["excluding_first_layer"], s["sink_share"]
    rows = [["sink events", num(s["sinks_per_image"]), num(first["sinks_per_image"])]]
    rows += [[LABELS.get(c, c), num(s[f"{c}_per_image"]), num(first[f"{c}_per_image"])] for c in CLASSES]
    table = markdown_table(("per image", "all layers", "without layer 0"), rows, left=("per image",))
    where = ", ".join(f"{LABELS.get(t, t)} {share.get(t, 0.0):.1%}" for t in TOKEN_TYPES)
    return f"## Summary\n\n{s['images']} images.\n\n{table}\n\nWhere the sinks sit (share of events): {where}."


def _md_layers(report: SinkReport) -> str:
    return (
        "## Per layer\n\nSink events per image, by class and by the sink's token type; `norm max` is the largest "
        "token norm in the layer's output over all images, `max/median` its ratio to the median token norm "
        f"(mean over images).\n\n{markdown_table(LAYER_HEADER, layer_rows(report))}"
    )


def _md_heads(report: SinkReport) -> str:
    rows = sink_head_rows(report)
    if not rows:
        return "## Sink heads\n\nNo head has a sink event on these images."
    text = (
        f"## Sink heads\n\nThe {len(rows)} heads with sink events over the {report.summary['images']} images, most "
        "events first: event counts by class, the dominant class and token type, and the medians of ratio_out and "
        f"stable rank over the head's events; max inflow is the mean over images.\n\n"
        f"{markdown_table(HEAD_HEADER, rows[:MAX_HEAD_ROWS], left=('class', 'token'))}"
    )
    if len(rows) > MAX_HEAD_ROWS:
        text += f"\n\n{len(rows) - MAX_HEAD_ROWS} more heads with sink events: see `heads.csv`."
    return text


def _md_figures(figures: Sequence[str]) -> str:
    def caption(name: str) -> str:
        if name.startswith("attention_layer"):
            return f"Where each head of layer {name[15:-4]} sends its attention, on the first image"
        return FIGURES.get(name, Path(name).stem.replace("_", " "))

    return "## Figures\n\n" + "\n\n".join(f"{caption(name)}:\n\n![{caption(name)}]({name})" for name in figures)


def _md_classes(report: SinkReport) -> str:
    t = report.thresholds
    return (
        "## What the classes mean\n\n"
        f"A head has a **sink event** on an image when at least {t['event']:.0%} of its queries put at least "
        f"{t['routed']:g} of their attention on one token, the sink. `ratio_out` is the norm of the sink's value "
        "after the head's output projection (and LayerScale) over the mean of the other tokens'; the stable rank is "
        "that of the head's update to all tokens (1: every token receives the same vector).\n\n"
        f"- **NOP**: ratio_out <= {t['nop_ratio']:g}. The sink's value is about zero: the head attends to it to "
        "add nothing.\n"
        f"- **broadcast**: ratio_out >= {t['broadcast_ratio']:g} and stable rank <= {t['broadcast_rank']:g}. The "
        "sink's value is large and every token receives it: one vector broadcast to all tokens.\n"
        "- **other**: neither.\n\n"
        "The token type says which token is the sink: the **CLS** token, a **register** or a **patch**."
    )


def _md_images(report: SinkReport) -> str:
    inputs = report.summary.get("inputs", {})
    used, skipped = inputs.get("images", []), inputs.get("skipped", [])
    text = f"## Images\n\n{inputs.get('images_from', '')}.\n\nUsed ({len(used)}): {_code_list(used)}."
    if skipped:
        text += f"\n\nSkipped ({len(skipped)}, unreadable by PIL or by the image processor): {_code_list(skipped)}."
    return text + ("" if skipped else "\n\nSkipped: none.")


def _code_list(names: list[str]) -> str:
    quoted = (name.replace("`", "'") for name in names)  # a backtick would end the code span
    return ", ".join(f"`{name}`" for name in quoted) or "none"
