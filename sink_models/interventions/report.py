"""The intervention report: one row per (image, head, edit) sink event, the checks, and the paper's per-class table
(the mean over a head's events, then over heads: heads are the units)."""

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..files import atomic_write
from ..vocabulary import ALL, CLASSES

METRICS = ("final_patch_relrms", "common_energy", "donor_cosine", "kl", "top1_agree", "top1_change")


@dataclass
class InterventionReport:
    """What `intervene` measured (see `sink_models.interventions.intervene`)."""

    rows: list[dict]
    heads: list[dict]
    checks: dict
    skipped: dict
    settings: dict
    model: dict = field(default_factory=dict)

    @classmethod
    def collect(cls, run, accelerator) -> "InterventionReport":
        """The run's figures, gathered over processes (image numbers made global, process 0's first)."""
        rows, events, checks, skipped, images = run.rows, run.events, run.checks, run.skipped, run.images
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            counts = gather_object([images])
            offset = sum(counts[: accelerator.process_index])
            rows = gather_object([{**row, "image": row["image"] + offset} for row in rows])
            events = _summed(gather_object([events]))
            every = gather_object([checks])
            checks = {name: max(c[name] for c in every) for name in ("local_identity_max", "noop_max")}
            checks["checked_heads"] = sorted({head for c in every for head in c["checked_heads"]}, key=by_position)
            skipped = _merged_skips(gather_object([skipped]))
            images = sum(counts)
        heads = [{"layer": layer, "head": head, **counts} for (layer, head), counts in sorted(events.items())]
        skipped = {"heads_without_events": [f"{h['layer']}:{h['head']}" for h in heads if not _events(h)], **skipped}
        settings = {"edits": list(run.edits), "seed": run.seed, "images": images}
        settings["donor_direction"] = run.donor_direction
        settings["thresholds"] = run.thresholds.to_dict()
        model = {"class": type(run.model).__name__, "family": run.adapter.family.name}
        model["name_or_path"] = run.model.config.name_or_path
        return cls(rows, heads, checks, skipped, settings, model)

    def by_class(self, metric: str = "final_patch_relrms", min_events: int = 1) -> list[dict]:
        """Per (class, edit): the mean over heads of each head's mean `metric` over its events of that class, the
        sample sd over heads, and the heads (a head enters a class with at least `min_events` such events)."""
        if metric not in METRICS:
            raise InputError(f"metric: got {metric!r}; allowed: {', '.join(METRICS)}.")
        groups: dict = {}
        for row in self.rows:
            if row[metric] is not None:
                key = (row["class"], row["edit"], row["layer"], row["head"])
                groups.setdefault(key, []).append(row[metric])
        table: dict = {}
        for (klass, edit, layer, head), values in groups.items():
            if len(values) >= min_events:
                entry = {"layer": layer, "head": head, "events": len(values), "mean": statistics.fmean(values)}
                table.setdefault((klass, edit), []).append(entry)
        out = []
        for (klass, edit), heads in sorted(table.items(), key=lambda item: _order(*item[0])):
            means = [h["mean"] for h in heads]
            out.append(
                {
                    "class": klass,
                    "edit": edit,
                    "metric": metric,
                    "mean": statistics.fmean(means),
                    "sd": statistics.stdev(means) if len(means) > 1 else None,
                    "heads": len(heads),
                    "events": sum(h["events"] for h in heads),
                    "per_head": heads,
                }
            )
        return out

    def table(self, metric: str = "final_patch_relrms", min_events: int = 1) -> str:
        """The per-class table in markdown: one row per edit, one column per class, `mean (heads / events)`."""
        cells = {(e["edit"], e["class"]): e for e in self.by_class(metric, min_events)}
        classes = [c for c in (*CLASSES, ALL) if any(k[1] == c for k in cells)]
        edits = list(dict.fromkeys(e for e, _ in sorted(cells, key=lambda k: _order(k[1], k[0]))))
        lines = [f"| edit ({metric}) | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for edit in edits:
            row = [_cell(cells.get((edit, klass))) for klass in classes]
            lines.append(f"| {edit} | " + " | ".join(row) + " |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, metric: str = "final_patch_relrms") -> Path:
        """Write the paper's Figure 6 for `metric` (bars per edit and class, dots per head) as a PNG; returns `path`."""
        from .plots import plot_interventions

        return plot_interventions(self, Path(path), metric)

    def to_json(self, path: str | os.PathLike) -> Path:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return atomic_write(Path(path), json.dumps(data, indent=1, allow_nan=False))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "InterventionReport":
        return cls(**json.loads(Path(path).read_text()))


def _order(klass: str, edit: str) -> tuple:
    from .edits import EDITS

    classes = (*CLASSES, ALL)
    return (classes.index(klass) if klass in classes else 9, EDITS.index(edit) if edit in EDITS else 99)


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['mean']:.3g} ({entry['heads']} / {entry['events']})"


def _summed(parts: list[dict]) -> dict:
    total: dict = {}
    for part in parts:
        for key, counts in part.items():
            into = total.setdefault(key, dict.fromkeys(counts, 0))
            for name, value in counts.items():
                into[name] += value
    return total


def _events(head: dict) -> int:
    return sum(head[klass] for klass in CLASSES)


def by_position(name: str) -> tuple[int, int]:
    """A "layer:head" name as (layer, head), to sort heads by position."""
    layer, head = name.split(":")
    return int(layer), int(head)


def _merged_skips(parts: list[dict]) -> dict:
    merged = {"images_without_event": {}, "edits_not_applicable": []}
    for part in parts:
        for key, value in part["images_without_event"].items():
            merged["images_without_event"][key] = merged["images_without_event"].get(key, 0) + value
        for entry in part["edits_not_applicable"]:
            if entry not in merged["edits_not_applicable"]:
                merged["edits_not_applicable"].append(entry)
    return merged
