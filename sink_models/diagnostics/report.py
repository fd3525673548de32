"""Accumulate per-image sink quantities while streaming, reduce them across processes, and report them."""

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write, finite
from ..vocabulary import CLASSES, TOKEN_TYPES
from .metrics import Grid, Thresholds

# Per-(layer, head) sums over images, divided by the image count in the report.
HEAD_SUMS = ("max_inflow", "cls_inflow", "cls_sink", "common_mode", "gate_mean", "gate_closed")
EVENT_FIELDS = (
    "max_inflow",
    "routed_frac",
    "ratio_out",
    "ratio_head",
    "stable_rank",
    "rank1_energy",
    "common_mode",
)


class Accumulator:
    """Running sums and the list of sink events; everything a report needs, nothing per image beyond events."""

    def __init__(self, num_layers: int, num_heads: int, grid: Grid | None = None):
        self.num_layers, self.num_heads, self.grid = num_layers, num_heads, grid
        self.images = 0
        self.head_sums = {name: torch.zeros(num_layers, num_heads, dtype=torch.float64) for name in HEAD_SUMS}
        self.common_mode_count = torch.zeros(num_layers, num_heads, dtype=torch.float64)
        self.norm_max = torch.zeros(num_layers, dtype=torch.float64)
        self.norm_ratio_sum = torch.zeros(num_layers, dtype=torch.float64)
        self.events: list[dict] = []
        self.gated = False
        # Events per (layer, event threshold, routed threshold, query set, class) under each of the grid's choices.
        shape = () if grid is None else (len(grid.event), len(grid.routed), len(grid.queries), len(CLASSES))
        self.grid_counts = None if grid is None else torch.zeros(num_layers, *shape, dtype=torch.float64)

    def add_token_norms(self, layer: int, largest: torch.Tensor, over_median: torch.Tensor) -> None:
        self.norm_max[layer] = max(self.norm_max[layer], largest.max().cpu())
        self.norm_ratio_sum[layer] += over_median.sum().cpu()

    def add_layer(self, layer: int, first_image: int, metrics: dict, gate=None) -> None:
        sums = self.head_sums
        sums["max_inflow"][layer] += metrics["max_inflow"].sum(0).cpu()
        sums["cls_inflow"][layer] += metrics["cls_inflow"].sum(0).cpu()
        common_mode = metrics["common_mode"].cpu()
        sums["common_mode"][layer] += common_mode.nan_to_num(0.0).sum(0)
        self.common_mode_count[layer] += (~common_mode.isnan()).double().sum(0)
        if gate is not None:
            self.gated = True
            sums["gate_mean"][layer] += gate[0].sum(0).cpu()
            sums["gate_closed"][layer] += gate[1].sum(0).cpu()
        if self.grid is not None:
            event = torch.tensor(self.grid.event, dtype=torch.float64, device=metrics["grid_routed"].device)
            hits = (metrics["grid_routed"][None] >= event[:, None, None, None, None]).double()  # E, B, H, R, Q
            classes = torch.nn.functional.one_hot(metrics["grid_class"], len(CLASSES)).double()  # B, H, C
            self.grid_counts[layer] += torch.einsum("ebhrq,bhc->erqc", hits, classes).cpu()
        events = metrics["event"].nonzero().tolist()
        if not events:
            return
        # Nested lists: indexing them per event is far cheaper than indexing tensors.
        values = {name: metrics[name].tolist() for name in ("sink", "class", "token_type", *EVENT_FIELDS)}
        for image, head in events:
            record = {"image": first_image + image, "layer": layer, "head": head}
            record["sink"] = values["sink"][image][head]
            record["class"] = CLASSES[values["class"][image][head]]
            record["token_type"] = TOKEN_TYPES[values["token_type"][image][head]]
            record.update({name: finite_or_none(values[name][image][head]) for name in EVENT_FIELDS})
            self.events.append(record)

    def add_cls_sinks(self, layer: int, cls_inflow: torch.Tensor, eps: float) -> None:
        self.head_sums["cls_sink"][layer] += (cls_inflow > eps).double().sum(0).cpu()

    def reduce(self, accelerator) -> None:
        """Sum (and max) the running figures of all processes and gather their events, in place."""
        if accelerator is None or accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object

        device = accelerator.device
        for name, value in self.head_sums.items():
            self.head_sums[name] = accelerator.reduce(value.to(device), reduction="sum").cpu()
        self.common_mode_count = accelerator.reduce(self.common_mode_count.to(device), reduction="sum").cpu()
        self.norm_ratio_sum = accelerator.reduce(self.norm_ratio_sum.to(device), reduction="sum").cpu()
        if self.grid_counts is not None:
            self.grid_counts = accelerator.reduce(self.grid_counts.to(device), reduction="sum").cpu()
        self.norm_max = accelerator.gather(self.norm_max.to(device)[None]).reshape(-1, self.num_layers).max(0).values
        self.norm_max = self.norm_max.cpu()
        counts = accelerator.gather(torch.tensor([self.images], device=device)).cpu()
        offsets = [0, *counts.cumsum(0).tolist()]
        # Image numbers become global: process p's images follow those of processes 0..p-1.
        for record in self.events:
            record["image"] += offsets[accelerator.process_index]
        self.events = gather_object(self.events)
        self.images = int(counts.sum())
        self.gated = bool(accelerator.reduce(torch.tensor([float(self.gated)], device=device), "sum").item())


def finite_or_none(value) -> float | None:
    """A float for JSON: None, NaN (undefined) and infinity (a ratio over zero norms) become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def median(values: list[float]) -> float | None:
    """The usual median (the mean of the two middle values for an even count); None for no values."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@dataclass
class SinkReport:
    """Sink diagnostics of one model on a set of images (see `sink_models.diagnostics.diagnose`)."""

    summary: dict
    heads: list[dict]
    layers: list[dict]
    events: list[dict]
    thresholds: dict
    model: dict
    attention: dict | None = None

    @classmethod
    def from_accumulator(cls, acc: Accumulator, thresholds: Thresholds, model: dict, attention) -> "SinkReport":
        n = acc.images
        has_cls = model.get("num_cls_tokens", 1) > 0  # without CLS tokens, CLS figures are undefined, not zero
        acc.events.sort(key=lambda r: (r["layer"], r["head"], r["image"]))
        by_head: dict[tuple[int, int], list[dict]] = {}
        for record in acc.events:
            by_head.setdefault((record["layer"], record["head"]), []).append(record)
        heads = []
        for layer in range(acc.num_layers):
            for head in range(acc.num_heads):
                events = by_head.get((layer, head), [])
                row = {"layer": layer, "head": head, **_counts(events)}
                row["max_inflow"] = float(acc.head_sums["max_inflow"][layer, head]) / n
                for name in ("ratio_out", "stable_rank", "ratio_head", "rank1_energy"):
                    row[name] = median([e[name] for e in events])
                row["cls_inflow"] = float(acc.head_sums["cls_inflow"][layer, head]) / n if has_cls else None
                row["cls_sink_rate"] = float(acc.head_sums["cls_sink"][layer, head]) / n if has_cls else None
                count = float(acc.common_mode_count[layer, head])
                row["common_mode"] = float(acc.head_sums["common_mode"][layer, head]) / count if count else None
                row["gate_mean"] = float(acc.head_sums["gate_mean"][layer, head]) / n if acc.gated else None
                row["gate_closed"] = float(acc.head_sums["gate_closed"][layer, head]) / n if acc.gated else None
                heads.append(row)
        layers = []
        for layer in range(acc.num_layers):
            events = [e for e in acc.events if e["layer"] == layer]
            row = {"layer": layer, **_counts(events), "sinks_per_image": len(events) / n}
            rate = float(acc.head_sums["cls_sink"][layer].sum()) / (n * acc.num_heads)
            row["cls_sink_rate"] = rate if has_cls else None
            row["token_norm_max"] = float(acc.norm_max[layer])
            row["token_norm_max_over_median"] = float(acc.norm_ratio_sum[layer]) / n
            layers.append(row)
        summary = {"images": n, **_per_image(acc.events, n)}
        summary["sink_share"] = {
            t: (sum(e["token_type"] == t for e in acc.events) / len(acc.events) if acc.events else 0.0)
            for t in TOKEN_TYPES
        }
        # Which token each class of sink sits on: do registers serve NOP as well as broadcast?
        summary["per_image_by_token"] = {
            c: {t: sum(e["class"] == c and e["token_type"] == t for e in acc.events) / n for t in TOKEN_TYPES}
            for c in CLASSES
        }
        summary["cls_sink_rate"] = (
            float(acc.head_sums["cls_sink"].sum()) / (n * acc.num_layers * acc.num_heads) if has_cls else None
        )
        # The paper's tables leave out block 0, whose sinks are of another kind.
        summary["excluding_first_layer"] = _per_image([e for e in acc.events if e["layer"] > 0], n)
        if acc.grid is not None:
            summary["sensitivity"] = _sensitivity(acc.grid, acc.grid_counts, n)
        # A model whose activations overflow (NaN / inf) still gets its report: undefined figures are None, named.
        parts, undefined = finite({"heads": heads, "layers": layers, "summary": summary, "attention": attention})
        heads, layers, summary, attention = (parts[name] for name in ("heads", "layers", "summary", "attention"))
        maps = sum(path.startswith("attention.") for path in undefined)  # one per token: counted, not listed
        undefined = [path for path in undefined if not path.startswith("attention.")]
        undefined += [f"attention ({maps} values)"] if maps else []
        if undefined:
            summary["non_finite"] = undefined
        return cls(summary, heads, layers, acc.events, thresholds.to_dict(), model, attention)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the whole report as JSON, atomically (a temporary file renamed into place)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return atomic_write(Path(path), json.dumps(data, indent=1, allow_nan=False))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "SinkReport":
        data = json.loads(Path(path).read_text())
        return cls(**data)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """The per-head table as CSV, one row per (layer, head)."""
        lines = _CsvLines()
        writer = csv.DictWriter(lines, fieldnames=list(self.heads[0]))
        writer.writeheader()
        writer.writerows(self.heads)
        return atomic_write(Path(path), "".join(lines))

    def plot(self, folder: str | os.PathLike, layer: int | None = None) -> list[Path]:
        """Write the report's figures as PNGs into `folder` (see `plots.py`); returns their paths."""
        from .plots import plot_report

        return plot_report(self, Path(folder), layer)


def _sensitivity(grid: Grid, counts: torch.Tensor, images: int) -> dict:
    """The grid and, per choice of it, sink events per image by class with and without block 0."""
    cells = []
    for e, event in enumerate(grid.event):
        for r, routed in enumerate(grid.routed):
            for q, queries in enumerate(grid.queries):
                for blocks, layers in (("all", slice(None)), ("after block 0", slice(1, None))):
                    by_class = counts[layers, e, r, q].sum(0) / images
                    cell = {"event": event, "routed": routed, "queries": queries, "blocks": blocks}
                    cell["sinks_per_image"] = float(by_class.sum())
                    cell |= {f"{c}_per_image": float(by_class[i]) for i, c in enumerate(CLASSES)}
                    cells.append(cell)
    return {"grid": grid.to_dict(), "cells": cells}


def _counts(events: list[dict]) -> dict:
    counts = {"events": len(events)}
    counts |= {c: sum(e["class"] == c for e in events) for c in CLASSES}
    counts |= {t: sum(e["token_type"] == t for e in events) for t in TOKEN_TYPES}
    return counts


def _per_image(events: list[dict], images: int) -> dict:
    out = {"sinks_per_image": len(events) / images}
    out |= {f"{c}_per_image": sum(e["class"] == c for e in events) / images for c in CLASSES}
    return out


class _CsvLines(list):
    def write(self, text: str) -> None:
        self.append(text)
