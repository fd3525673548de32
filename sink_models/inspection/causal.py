"""`sink-models inspect --interventions`: the causal edits of docs/science.md section 8 on the inspected images (the
heads the diagnostics select, or those given), their section of report.md and the text the command prints."""

import sys
from collections.abc import Iterator, Sequence

from ..diagnostics import SinkReport
from ..diagnostics.capture import adapter_for
from ..errors import InputError
from ..interventions import DEFAULT_EDITS, EDITS, InterventionReport, intervene, select_heads
from ..vocabulary import ALL, CLASSES
from .images import ImageSet, _process
from .tables import LABELS, text_table

CLASS_ORDER = (*CLASSES, ALL)
FIGURE = "interventions.png"


def parse_edits(edits: str | Sequence[str] | None) -> tuple[str, ...]:
    """The edits to run: `a,b,c` or a list of names from `EDITS`; None: `DEFAULT_EDITS`."""
    if edits is None:
        return DEFAULT_EDITS
    names = [name.strip() for name in edits.split(",")] if isinstance(edits, str) else list(edits)
    unknown = [name for name in names if name not in EDITS]
    if unknown or not names:
        raise InputError(f"edits: got {', '.join(map(str, names)) or 'none'}; allowed: {', '.join(EDITS)}.")
    return tuple(dict.fromkeys(names))


def parse_heads(heads: str | Sequence[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """The heads to edit: `L:H,L:H` or (layer, head) pairs; None: the diagnostics choose."""
    if heads is None:
        return None
    if isinstance(heads, str):
        pairs = [part.strip().split(":") for part in heads.split(",")]
        if not all(len(p) == 2 and p[0].isdigit() and p[1].isdigit() for p in pairs):
            raise InputError(f"heads: got {heads!r}; allowed: layer:head pairs separated by commas, e.g. 3:0,5:2.")
        return [(int(layer), int(head)) for layer, head in pairs]
    pairs = [tuple(pair) for pair in heads]
    if not pairs or not all(len(p) == 2 and all(type(x) is int and x >= 0 for x in p) for p in pairs):
        raise InputError(f"heads: got {heads!r}; allowed: a non-empty list of (layer, head) pairs of ints >= 0.")
    return pairs


def check_heads(model, heads: list[tuple[int, int]] | None) -> None:
    """Refuse, before any work, a head outside the model."""
    if heads is None:
        return
    adapter = adapter_for(model)
    layers, count = len(adapter.layers), adapter.num_heads
    for layer, head in heads:
        if layer >= layers or head >= count:
            raise InputError(
                f"heads: {layer}:{head} is outside the model's {layers} layers x {count} heads "
                f"(layer 0-{layers - 1}, head 0-{count - 1})."
            )


def run_interventions(
    model, processor, found: ImageSet, batch_size: int, report: SinkReport, edits, heads, progress: bool
) -> InterventionReport:
    """`intervene` on the images the diagnostics used, on `heads` or those `select_heads` picks from `report`."""
    chosen = select_heads(report) if heads is None else heads
    report.summary["inputs"]["interventions"] = {
        "heads": [list(pair) for pair in chosen],
        "heads_from": "select_heads" if heads is None else "given",
        "edits": list(edits),
    }
    if progress and chosen:  # no bar inside intervene: say what the wait is for
        print(f"interventions: {len(chosen)} heads x {len(edits)} edits ...", file=sys.stderr, flush=True)
    return intervene(model, _used_batches(processor, found, batch_size), heads=chosen, edits=edits)


def _used_batches(processor, found: ImageSet, batch_size: int) -> Iterator[dict]:
    """The processor's outputs for the images the diagnostics used, `batch_size` at a time (the donor of an image is
    the next one of its batch)."""
    used = [image for i, image in enumerate(found.images) if i not in found.failed]
    for start in range(0, len(used), batch_size):
        yield _process(processor, used[start : start + batch_size])


def _cell(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['mean']:.3g} ({entry['heads']}/{entry['events']})"


def causal_text(interventions: InterventionReport) -> str:
    """What the command prints: the per-class final_patch_relrms table, or one line when nothing was edited."""
    if not interventions.rows:
        return f"causal interventions: {_nothing(interventions)}"
    cells = {(e["edit"], e["class"]): e for e in interventions.by_class()}
    classes = [c for c in CLASS_ORDER if any(klass == c for _, klass in cells)]
    edits = [edit for edit in EDITS if any(name == edit for name, _ in cells)]
    rows = [[edit, *(_cell(cells.get((edit, klass))) for klass in classes)] for edit in edits]
    header = ("edit", *(LABELS.get(c, c) for c in classes))
    title = "causal interventions: final patch change (relative RMS), mean over heads (heads/events):"
    return title + "\n" + text_table(header, rows)


def causal_markdown(interventions: InterventionReport, inputs: dict) -> str:
    """report.md's section "Causal interventions", or one line when no head had a sink event to edit."""
    if not interventions.rows:
        return f"**Causal interventions**: {_nothing(interventions)}"
    chosen = inputs.get("interventions", {})
    parts = [
        "## Causal interventions",
        _what(interventions, chosen),
        "Relative RMS change of the final patch tokens (`final_patch_relrms`, the sink token left out) per sink "
        "class: the mean over heads of each head's mean over its events; in brackets heads / events.\n\n"
        + interventions.table("final_patch_relrms"),
    ]
    lines = interventions.table("donor_cosine").splitlines()
    rows = [line for line in lines[2:] if line.startswith("| donor_sink_value |")]
    if rows:  # none when the donor's value changed nothing: a cosine of no change is undefined
        donor = "\n".join(lines[:2] + rows)
        parts.append(
            "Donor cosine of the donor's sink value: the cosine between the mean patch change and the donor's mean "
            "final patch minus the image's own (1: the donor's information transplanted).\n\n" + donor
        )
    parts += [_reading(), _checks(interventions), _skipped(interventions), f"![Causal interventions]({FIGURE})"]
    return "\n\n".join(parts)


def _nothing(interventions: InterventionReport) -> str:
    """The one line for a run that edited nothing."""
    if not interventions.heads:
        return "none: no head has a sink event on these images, so there is nothing to edit."
    heads = ", ".join(f"{h['layer']}:{h['head']}" for h in interventions.heads)
    return f"none: the heads given ({heads}) have no sink event on these images, so nothing was edited."


def _what(interventions: InterventionReport, chosen: dict) -> str:
    heads = ", ".join(_head_label(head) for head in interventions.heads)
    source = "given with `--heads`" if chosen.get("heads_from") == "given" else "chosen by `select_heads`"
    edits = ", ".join(f"`{edit}`" for edit in interventions.settings["edits"])
    return (
        f"Each head (layer:head, its sink events by class) edited on every image where it has a sink event, one "
        f"head and one edit at a time, its attention held fixed: {heads}, {source}. Edits: {edits}. Images: "
        f"{interventions.settings['images']}, the donor of an image being the next one of its batch; mean values are "
        "taken over the same images."
    )


def _head_label(head: dict) -> str:
    counts = ", ".join(f"{LABELS.get(c, c)} {head[c]}" for c in CLASS_ORDER[:3] if head[c]) or "no event"
    return f"`{head['layer']}:{head['head']}` ({counts})"


def _reading() -> str:
    return (
        "How to read it: at a NOP sink the value edits (zero, mean, donor's) change ~nothing while removing the "
        "attention to the sink does; at a broadcast sink zeroing the value changes every token, and the donor's sink "
        "value carries the donor's information over (donor cosine near 1). The control should change ~nothing."
    )


def _checks(interventions: InterventionReport) -> str:
    c = interventions.checks
    heads = ", ".join(f"`{name}`" for name in c["checked_heads"]) or "none"
    return (
        f"Checks, once per edited head ({heads}): each value edit changes the head's update by exactly "
        f"A[:, p] (u'_p - u_p), to a relative error of {c['local_identity_max']:.1e} at most (float64; bound 1e-8); "
        f"a no-op edit moves the final patch tokens by {c['noop_max']:.1e} at most (relative RMS)."
    )


def _skipped(interventions: InterventionReport) -> str:
    s = interventions.skipped
    never = ", ".join(f"`{name}`" for name in s["heads_without_events"]) or "none"
    unedited = ", ".join(f"`{name}` {n}" for name, n in s["images_without_event"].items() if n) or "none"
    not_applicable = "; ".join(s["edits_not_applicable"]) or "none"
    return (
        f"Skipped (not edited, counted): heads without any sink event on these images: {never}; images a head was not "
        f"edited on, having no sink event of it: {unedited}; edits that do not apply: {not_applicable}."
    )
