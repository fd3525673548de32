"""The leaderboard's table, from the results dataset (ORG/sink-zoo-results) or a local folder of its records (or of
eval/run.py's results).

Self-contained (stdlib and huggingface_hub only): `upload/push.py` ships a copy beside the leaderboard Space's app,
which runs on the Hub without this package.
"""

import json
from pathlib import Path

from huggingface_hub import HfApi

FIGURES = ("events_by_head.png", "sink_types_by_layer.png", "diagnostic_plane.png")
# (heading, how to read it from a record); numbers stay numbers so that the table sorts by value.
COLUMNS = (
    ("model", lambda r: r["config"]["model_name"]),
    ("variant", lambda r: r["model"].get("variant")),
    ("size", lambda r: r["model"].get("size")),
    ("training data", lambda r: r["model"].get("dataset")),
    ("parameters (M)", lambda r: _round(r["model"].get("parameters"), 1e6, 3)),
    ("GFLOPs", lambda r: _round(r["model"].get("gflops"), 1, 4)),
    ("images/s", lambda r: _round(r["model"].get("images_per_s"), 1, 1)),
    ("top-1", lambda r: _top1(r)),
    ("sinks / img", lambda r: _round(r["results"]["sinks"]["sinks_per_image"], 1, 3)),
    ("NOP / img", lambda r: _round(r["results"]["sinks"]["nop_per_image"], 1, 3)),
    ("broadcast / img", lambda r: _round(r["results"]["sinks"]["broadcast_per_image"], 1, 3)),
    ("CLS share", lambda r: _round(r["results"]["sinks"]["cls_share"], 1, 3)),
    ("register share", lambda r: _round(r["results"]["sinks"]["register_share"], 1, 3)),
    ("patch share", lambda r: _round(r["results"]["sinks"]["patch_share"], 1, 3)),
    ("date", lambda r: r["model"].get("date")),
)


def load_records(source: str, endpoint: str | None = None, token: str | None = None) -> list[dict]:
    """The records of a local folder of `*.json` files, or of a results dataset on the Hub (`org/name`)."""
    folder = Path(source)
    if not folder.is_dir():
        folder = Path(HfApi(endpoint=endpoint, token=token).snapshot_download(source, repo_type="dataset"))
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    # eval/run.py's results (e.g. the repository's results/ folder) become records too; synthetic.json is no model.
    records = [r if "config" in r else leaderboard_record(r, r["name"], None) for r in records if "rows" not in r]
    if not records:
        raise ValueError(f"results: no JSON records in {source!r}; allowed: a results dataset or a folder of them.")
    return records


def leaderboard_record(result: dict, repo_id: str, commit: str | None) -> dict:
    """One checkpoint in the demo-leaderboard format, plus the sink metrics and what the table shows, from the
    results JSON that eval/run.py writes."""
    accuracy = result["accuracy"] or {}
    sinks = result["sinks"]
    training = result.get("training") or {}
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
        },
        "model": {
            "variant": training.get("model", {}).get("variant"),
            "size": training.get("model", {}).get("size"),
            "dataset": training.get("data", {}).get("dataset"),  # what it was trained on (None: not by us)
            "parameters": result["model"]["parameters"],
            "gflops": (result.get("cost") or {}).get("gflops"),
            "images_per_s": (result.get("cost") or {}).get("images_per_s"),
            "date": result["date"],
        },
    }


def table(records: list[dict]) -> list[dict]:
    """One row per record, best top-1 first: {heading: value}."""
    rows = [{heading: read(record) for heading, read in COLUMNS} for record in records]
    return sorted(rows, key=lambda row: -(row["top-1"] if row["top-1"] is not None else -1))


def markdown(rows: list[dict], link: str | None = None) -> str:
    """The rows as a Markdown table; with `link` (a Hub URL), model names link to their repos."""
    headings = [heading for heading, _ in COLUMNS]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for row in rows:
        cells = ["-" if row[h] is None else str(row[h]) for h in headings]
        if link:
            cells[0] = f"[{row['model']}]({link.rstrip('/')}/{row['model']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _top1(record: dict) -> float | None:
    tasks = [name for name in record["results"] if name != "sinks"]  # the dataset evaluated on
    value = record["results"][tasks[0]].get("top1") if tasks else None
    return None if value is None else round(100 * value, 2)


def _round(value, unit: float, digits: int):
    return None if value is None else round(value / unit, digits)
