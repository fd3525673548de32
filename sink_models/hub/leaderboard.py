"""The leaderboard's tables, from the results dataset (ORG/sink-zoo-results) or a local folder of its records (or of
eval/run.py's results): image models (one record per checkpoint) and the synthetic-task models (synthetic.json).

Self-contained (stdlib and huggingface_hub only): `push/run.py` ships a copy beside the leaderboard Space's app,
which runs on the Hub without this package.
"""

import hashlib
import json
import math
import re
import statistics
from collections.abc import Callable, Hashable
from pathlib import Path

from huggingface_hub import HfApi

FIGURES = ("events_by_head.png", "sink_types_by_layer.png", "diagnostic_plane.png")  # diagnostics.plots.FIGURES' names:
# this module runs alone in the leaderboard Space, so it cannot import them (tests/test_leaderboard.py holds them equal)
TASK_ROWS = "synthetic.json"
# The dense probe's headline numbers that a record keeps (fractions; pixel_miou may be None).
DENSE_PROBE = ("miou", "foreground_miou", "accuracy", "pixel_miou")
# A record's results blocks that are not the dataset evaluated on.
BLOCKS = ("sinks", "dense_probe")
STABILITY = ("loss_spikes", "largest_grad_norm", "largest_activation", "token_norm_max_over_median")
# Training arguments that say where and how a run was logged or checkpointed, not what model it trains.
RUN_KEYS = (
    "seed",
    "output_dir",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "resume_from_checkpoint",
    "report_to",
    "dataloader_num_workers",  # the images a step sees do not depend on who decodes them (tested)
    "dataloader_prefetch_factor",
    "torch_compile",  # the same computation, compiled
    "torch_compile_backend",
)
# (heading, how to read it from a record); numbers stay numbers so that the table sorts by value.
COLUMNS = (
    ("model", lambda r: r["config"]["model_name"]),
    ("variant", lambda r: r["model"].get("variant")),
    ("size", lambda r: r["model"].get("size")),
    ("training data", lambda r: r["model"].get("dataset")),
    ("seed", lambda r: r["model"].get("seed")),
    ("parameters (M)", lambda r: _round(r["model"].get("parameters"), 1e6, 3)),
    ("GFLOPs", lambda r: _round(r["model"].get("gflops"), 1, 4)),
    ("images/s", lambda r: _round(r["model"].get("images_per_s"), 1, 1)),
    ("top-1", lambda r: _top1(r)),
    ("mIoU", lambda r: _percent((r["results"].get("dense_probe") or {}).get("miou"))),
    ("sinks / img", lambda r: _round(r["results"]["sinks"]["sinks_per_image"], 1, 3)),
    ("NOP / img", lambda r: _round(r["results"]["sinks"]["nop_per_image"], 1, 3)),
    ("broadcast / img", lambda r: _round(r["results"]["sinks"]["broadcast_per_image"], 1, 3)),
    ("CLS share", lambda r: _round(r["results"]["sinks"]["cls_share"], 1, 3)),
    ("register share", lambda r: _round(r["results"]["sinks"]["register_share"], 1, 3)),
    ("patch share", lambda r: _round(r["results"]["sinks"]["patch_share"], 1, 3)),
    ("largest activation", lambda r: _significant(_stability(r, "largest_activation"))),
    ("token-norm max / median", lambda r: _significant(_stability(r, "token_norm_max_over_median"))),
    ("loss spikes", lambda r: _stability(r, "loss_spikes")),
    ("recipe", lambda r: r.get("recipe")),
    ("date", lambda r: r["model"].get("date")),
)
# The synthetic.json key holding each task's sink attention: NOP queries on the null token, everyone on j*.
SINK_ATTENTION = {"nop": "null_attention_nop", "broadcast": "attention_jstar"}
TASK_NOTE = (
    "Task models (the paper's synthetic NOP and broadcast tasks), one row per model. `sink attention`: the NOP "
    "queries' attention to the null token (NOP task) or the attention to the key token j* (broadcast task), in the "
    "layer where it is largest (`sink layer`, 1-based); `loss ratio, sink zeroed`: the task loss (MSE) with that "
    "layer's sink value zeroed, divided by the task loss (1: the sink carries nothing the task needs); events are "
    "per sequence, summed over layers."
)
SPREAD_NOTE = (
    "Seeds grouped: one row per recipe (image models) or per task, variant and name (task models); numbers are the "
    "mean ± the sample standard deviation (n - 1) over the `seeds` runs, `seed` lists them."
)
# Columns that name something rather than measure it: a group lists their values instead of averaging them.
LISTED = ("seed", "sink layer")
SEED_SUFFIX = re.compile(r"-seed\d+$")


def load_records(source: str, endpoint: str | None = None, token: str | None = None) -> list[dict]:
    """The records of a local folder of `*.json` files, or of a results dataset on the Hub (`org/name`)."""
    folder = _folder(source, endpoint, token)
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    # eval/run.py's results (e.g. the repository's results/ folder) become records too; the suites' summaries
    # (synthetic.json, interventions.json) describe no one model.
    records = [r if "config" in r else leaderboard_record(r, r["name"], None) for r in records if _is_model(r)]
    if not records:
        raise ValueError(f"results: no JSON records in {source!r}; allowed: a results dataset or a folder of them.")
    return records


def _is_model(record: dict) -> bool:
    """A leaderboard record, or a results JSON of one model."""
    return "config" in record or ("name" in record and "sinks" in record)


def load_task_rows(source: str, endpoint: str | None = None, token: str | None = None) -> list[dict]:
    """The rows of synthetic.json (one per task model and layer) in the same folder or dataset; [] without one."""
    path = _folder(source, endpoint, token) / TASK_ROWS
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def leaderboard_record(result: dict, repo_id: str, commit: str | None) -> dict:
    """One checkpoint in the demo-leaderboard format, plus the sink metrics and what the table shows, from the
    results JSON that eval/run.py writes."""
    accuracy = result["accuracy"] or {}
    sinks = result["sinks"]
    training = result.get("training") or {}
    stability = result.get("stability") or {}  # older results have none
    probe = result.get("dense_probe")  # None: not measured, and the record stays as it was before the probe
    dense = {} if probe is None else {"dense_probe": {key: probe.get(key) for key in DENSE_PROBE}}
    return {
        "config": {"model_name": repo_id, "model_sha": commit, "model_dtype": "float32"},
        "results": {
            result["dataset"]["name"]: {key: accuracy[key] for key in ("top1", "top5") if key in accuracy},
            "sinks": {
                "sinks_per_image": sinks["sinks_per_image"],
                "nop_per_image": sinks["nop_per_image"],
                "broadcast_per_image": sinks["broadcast_per_image"],
                "cls_share": sinks["sink_share"]["cls"],
                "register_share": sinks["sink_share"]["register"],
                "patch_share": sinks["sink_share"]["patch"],
                "cls_sink_rate": sinks["cls_sink_rate"],
            },
            **dense,
        },
        "model": {
            "variant": _variant(training),
            "size": training.get("model", {}).get("size"),
            "dataset": training.get("data", {}).get("dataset"),  # what it was trained on (None: not by us)
            "seed": training.get("train", {}).get("seed"),
            "parameters": result["model"]["parameters"],
            "gflops": (result.get("cost") or {}).get("gflops"),
            "images_per_s": (result.get("cost") or {}).get("images_per_s"),
            "date": result["date"],
        },
        "stability": {key: stability.get(key) for key in STABILITY},
        "recipe": recipe_digest(result.get("training")),
    }


def _variant(training: dict) -> str | None:
    """The recipe's variant, `-penalty` added when it trained with the common-mode penalty (same architecture)."""
    variant = training.get("model", {}).get("variant")
    penalised = (training.get("train", {}).get("common_mode_penalty") or 0) > 0
    return f"{variant}-penalty" if variant and penalised else variant


def recipe_digest(training: dict | None) -> str | None:
    """10 hex digits of the SHA-256 of the training recipe (model, data and train groups) without RUN_KEYS: equal
    for runs that differ only in seed or bookkeeping; None for a model not trained by us."""
    if not training:
        return None
    recipe = {
        group: {key: _canonical(value) for key, value in values.items() if key not in RUN_KEYS}
        for group, values in training.items()
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def table(records: list[dict]) -> list[dict]:
    """One row per record, best top-1 first: {heading: value}."""
    rows = [{heading: read(record) for heading, read in COLUMNS} for record in records]
    return sorted(rows, key=lambda row: -(row["top-1"] if row["top-1"] is not None else -1))


def task_table(rows: list[dict]) -> list[dict]:
    """One row per task model (name and seed) from synthetic.json's per-layer rows, in their order: {heading: value}
    (TASK_NOTE says what the columns mean)."""
    models: dict[tuple, list[dict]] = {}
    for row in rows:
        models.setdefault((row["name"], row["seed"]), []).append(row)
    return [_task_row(layers) for layers in models.values()]


def by_recipe(row: dict) -> str | None:
    """The seed group of an image row: its recipe (None: a group of its own)."""
    return row["recipe"]


def by_task_model(row: dict) -> tuple:
    """The seed group of a task row: task, variant and the name without a trailing `-seedN`."""
    return row["task"], row["variant"], SEED_SUFFIX.sub("", row["model"])


def group_seeds(rows: list[dict], key: Callable[[dict], Hashable | None]) -> list[dict]:
    """One row per group of rows with the same `key` (None: a group of its own), in the order of each group's first
    row, with a `seeds` column (the rows in the group). A group of several rows is named by their common name less a
    trailing `-seedN` (else its first row's name); its numbers become "mean ± sample standard deviation (n - 1)"
    over the rows that have one (missing values left out), the LISTED columns list their distinct values, and other
    text is kept when all rows agree, else listed."""
    groups: dict[Hashable, list[dict]] = {}
    for row in rows:
        found = key(row)
        groups.setdefault(object() if found is None else found, []).append(row)
    return [_merged(members) for members in groups.values()]


def markdown(rows: list[dict], link: str | None = None) -> str:
    """The rows as a Markdown table, columns as in the first row; with `link` (a Hub URL), model names link to their
    repos."""
    headings = list(rows[0]) if rows else [heading for heading, _ in COLUMNS]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for row in rows:
        cells = ["-" if row[h] is None else str(row[h]) for h in headings]
        if link:
            cells[0] = f"[{row['model']}]({link.rstrip('/')}/{row['model']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _folder(source: str, endpoint: str | None, token: str | None) -> Path:
    folder = Path(source)
    if folder.is_dir():
        return folder
    return Path(HfApi(endpoint=endpoint, token=token).snapshot_download(source, repo_type="dataset"))


def _canonical(value):
    # model_overrides and dataset_options are JSON text: equal objects written differently are the same recipe.
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _task_row(layers: list[dict]) -> dict:
    first = layers[0]
    attention = SINK_ATTENTION.get(first["task"])
    measured = [row for row in layers if attention and row.get(attention) is not None]
    sink = max(measured, key=lambda row: row[attention]) if measured else None
    zeroed = None if sink is None else sink.get("loss_sink_zeroed")
    ratio = zeroed / first["loss"] if zeroed is not None and first.get("loss") else None
    return {
        "model": first["name"],
        "task": first["task"],
        "variant": first.get("variant"),
        "seed": first["seed"],
        "task loss": _significant(first.get("loss")),
        "sink attention": None if sink is None else _significant(sink[attention]),
        "sink layer": None if sink is None else sink["layer"],
        "loss ratio, sink zeroed": _significant(ratio),
        "NOP events / seq": _significant(_sum(layers, "events_nop")),
        "broadcast events / seq": _significant(_sum(layers, "events_broadcast")),
    }


def _sum(layers: list[dict], key: str) -> float | None:
    values = [row[key] for row in layers if row.get(key) is not None]
    return sum(values) if values else None


def _merged(members: list[dict]) -> dict:
    first = members[0]
    if len(members) == 1:
        return {"model": first["model"], "seeds": 1, **first}
    names = {SEED_SUFFIX.sub("", row["model"]) for row in members}
    merged = {"model": names.pop() if len(names) == 1 else first["model"], "seeds": len(members)}
    for heading in (h for h in first if h != "model"):
        values = [row[heading] for row in members if row.get(heading) is not None]
        if not values:
            merged[heading] = None
        elif heading in LISTED:
            merged[heading] = ", ".join(str(value) for value in sorted(set(values)))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            merged[heading] = values[0] if len(values) == 1 else _mean_spread(values)
        else:
            merged[heading] = ", ".join(dict.fromkeys(str(value) for value in values))
    return merged


def _mean_spread(values: list[float]) -> str:
    mean, spread = statistics.mean(values), statistics.stdev(values)
    if spread == 0:
        return f"{mean:.4g} ± 0"
    decimals = max(0, 1 - math.floor(math.log10(spread)))  # two significant digits of the spread
    return f"{mean:.{decimals}f} ± {spread:.{decimals}f}"


def _stability(record: dict, key: str):
    return (record.get("stability") or {}).get(key)  # records pushed before the stability block have none


def _top1(record: dict) -> float | None:
    tasks = [name for name in record["results"] if name not in BLOCKS]  # the dataset evaluated on
    return _percent(record["results"][tasks[0]].get("top1") if tasks else None)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(100 * fraction, 2)


def _round(value, unit: float, digits: int):
    return None if value is None else round(value / unit, digits)


def _significant(value, digits: int = 3):
    return None if value is None else float(f"{value:.{digits}g}")
