"""The paper's causal signatures on our own zoo (docs/science.md sections 5, 6 and 8): `intervene` on the synthetic-task
models (every head) and on the canvas image models (the heads `select_heads` picks), written to
results/interventions.{json,md,png} beside the paper's numbers."""

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..diagnostics import Thresholds
from ..evaluation.cards import markdown_table, merge_sections
from ..evaluation.evaluate import (
    EvalArguments,
    checkpoint_name,
    data_choice,
    intervention_block,
    intervention_report,
    load_checkpoint,
    load_choice,
)
from ..files import atomic_write, write_json
from ..interventions.intervene import intervene
from ..interventions.report import InterventionReport
from ..vocabulary import CLASSES
from .reference import PAPER_TOY
from .synthetic import load_task_model, task_loss

TASK_BATCHES, TASK_BATCH_SIZE = 2, 256  # sequences edited; as many more give the mean sink value
# The NOP task routes only its NOP queries (about half) to the null token, so the 90%-of-queries rule never fires
# there (docs/science.md section 5): every (sequence, head) counts as an event at its dominant key; the class rule
# decides.
EVERY_SEQUENCE = Thresholds(event=0.0)
MIN_EVENTS = 5  # a head enters a class with this many events of it (the paper: 20 of 4,096 images)
# The paper's edits in its column order (the control last), with the short names of the tables.
SHORT = {"zero_sink_value": "zero", "mean_sink_value": "mean", "donor_sink_value": "donor's"}
SHORT |= {
    "donor_nonsink_value": "ordinary",
    "redirect_sink_attention": "redirect",
    "zero_random_nonsink_value": "zero non-sink",
}
EDITS = tuple(SHORT)


def causal_runs(
    folders: list[str], images: int = 64, trusted: list[bool] | None = None, progress: bool = False
) -> list[dict]:
    """One run per checkpoint: a synthetic-task model (every head, `TASK_BATCHES` batches) or an image model (its
    first `images` held-out images); `trusted[i]`: run checkpoint i's own code (image models only)."""
    trusted = trusted or [False] * len(folders)
    pairs = tqdm(list(zip(folders, trusted, strict=True)), desc="interventions", unit="model", disable=not progress)
    return [_task_run(f) if _is_task(f) else _image_run(f, images, t) for f, t in pairs]


def _is_task(folder: str) -> bool:
    path = Path(folder) / "training_args.json"
    dataset = json.loads(path.read_text()).get("data", {}).get("dataset") if path.is_file() else None
    return dataset in ("nop", "broadcast")


@torch.no_grad()
def _task_run(folder: str) -> dict:
    model, task, args = load_task_model(folder)
    config = model.config
    heads = [(layer, head) for layer in range(config.num_hidden_layers) for head in range(config.num_attention_heads)]
    batches = [task.batch(10**9 + index, TASK_BATCH_SIZE) for index in range(2 * TASK_BATCHES)]
    pixels = [{"pixel_values": batch["pixel_values"]} for batch in batches]
    edited, held_out = pixels[:TASK_BATCHES], pixels[TASK_BATCHES:]
    report = intervene(model.sink_vit, edited, heads=heads, held_out=held_out, thresholds=EVERY_SEQUENCE)
    # The task loss with head 0's sink value zeroed (A held fixed: a value edit leaves q and k alone).
    data, layers = batches[:TASK_BATCHES], range(config.num_hidden_layers)
    mse = [[task_loss(model, data), task_loss(model, data, zero=(layer, _sinks(report, layer)))] for layer in layers]
    return _run(folder, args, report) | {"task": task.kind, "mse": mse}


def _sinks(report: InterventionReport, layer: int) -> torch.Tensor:
    rows = [r for r in report.rows if (r["layer"], r["head"], r["edit"]) == (layer, 0, "zero_sink_value")]
    return torch.tensor([r["sink"] for r in sorted(rows, key=lambda r: r["image"])])


def _image_run(folder: str, images: int, trusted: bool) -> dict:
    checkpoint = load_checkpoint(folder, revision=None, trust_remote_code=trusted)
    report = intervention_report(checkpoint, load_choice(data_choice(EvalArguments(), checkpoint)), images)
    return _run(folder, checkpoint.training_args, report) | {"task": None}


def _run(folder: str, args: dict, report: InterventionReport) -> dict:
    penalty = args["train"].get("common_mode_penalty", 0.0)
    label = args["model"]["variant"] + ("-penalty" if penalty else "")
    return {"name": checkpoint_name(folder), "label": label, "seed": args["train"]["seed"], "report": report}


def pooled(runs: list[dict], title: str, keep: Callable[[dict], bool], klass: str | None = None) -> InterventionReport:
    """One report of several runs' rows that `keep`, each run's head a unit of its own (the paper pools its four DINOv2
    models so) that enters a class with `MIN_EVENTS` events of it; `klass` relabels every event (e.g. "all")."""
    rows = [
        row | {"head": f"{run['name']}:{row['head']}"} | ({"class": klass} if klass else {})
        for run in runs
        for row in run["report"].rows
        if keep(row)
    ]
    units = Counter((row["class"], row["edit"], row["layer"], row["head"]) for row in rows)
    rows = [row for row in rows if units[row["class"], row["edit"], row["layer"], row["head"]] >= MIN_EVENTS]
    heads = [head for run in runs for head in run["report"].heads if keep(head)]
    checks = {name: max(run["report"].checks[name] for run in runs) for name in ("local_identity_max", "noop_max")}
    settings = runs[0]["report"].settings | {"images": sum(run["report"].settings["images"] for run in runs)}
    return InterventionReport(rows, heads, checks, {}, settings, {"name_or_path": title})


def class_table(groups: dict[str, InterventionReport], logits: bool) -> str:
    """Per group and sink class: heads / events, final_patch_relrms per edit, the donor cosine (donor's sink value)
    and, with `logits`, the KL and the top-1 change (percentage points) of zeroing the sink value."""
    columns = ["model", "class", "heads / events", *(SHORT[e] for e in EDITS), "donor cos"]
    columns += ["KL, zero", "top-1 change, zero (pp)"] if logits else []
    lines = []
    for name, report in groups.items():
        tables = {m: _cells(report, m) for m in ("final_patch_relrms", "donor_cosine", "kl", "top1_change")}
        for klass in CLASSES:
            first = tables["final_patch_relrms"].get((klass, "zero_sink_value"))
            if first is None:
                continue
            line = [name, klass, f"{first['heads']} / {first['events']}"]
            line += [_mean(tables["final_patch_relrms"], klass, e) for e in EDITS]
            line.append(_mean(tables["donor_cosine"], klass, "donor_sink_value"))
            if logits:
                top1 = _mean(tables["top1_change"], klass, "zero_sink_value")
                line += [_mean(tables["kl"], klass, "zero_sink_value"), None if top1 is None else 100 * top1]
            lines.append(line)
    return markdown_table(columns, lines)


def _cells(report: InterventionReport, metric: str) -> dict:
    return {(e["class"], e["edit"]): e for e in report.by_class(metric, MIN_EVENTS)}


def _mean(cells: dict, klass: str, edit: str) -> float | None:
    entry = cells.get((klass, edit))
    return None if entry is None else entry["mean"]


def layer_table(runs: list[dict]) -> str:
    """Per task, variant and layer: events by class, each edit's final_patch_relrms over all the head's events, the
    donor cosine and the task MSE before / with the sink value zeroed, means over seeds; the paper's toy rows last."""
    columns = ["task", "variant", "layer", "events NOP / broadcast / other", *(SHORT[e] for e in EDITS)]
    columns += ["donor cos", "MSE", "MSE, sink value zeroed"]
    lines = []
    for task, label in dict.fromkeys((r["task"], r["label"]) for r in runs if r["task"]):
        group = [r for r in runs if (r["task"], r["label"]) == (task, label)]
        for layer in range(len(group[0]["mse"])):
            every = pooled(group, label, lambda row, layer=layer: row["layer"] == layer, klass="all")
            relrms, cosine = _cells(every, "final_patch_relrms"), _cells(every, "donor_cosine")
            counts = [sum(h[k] for h in every.heads) for k in CLASSES]
            mse = [sum(r["mse"][layer][i] for r in group) / len(group) for i in (0, 1)]
            line = [task, label, f"L{layer + 1}", " / ".join(map(str, counts))]
            line += [_mean(relrms, "all", e) for e in EDITS] + [_mean(cosine, "all", "donor_sink_value"), *mse]
            lines.append(line)
    for (task, layer), (effects, cosine, mse) in PAPER_TOY.items():
        lines.append([task, "paper toy (RMS)", f"L{layer}", "-", *effects, cosine, *mse])
    return markdown_table(columns, lines)


def write_interventions(runs: list[dict], results_dir: Path, images: int = 64) -> None:
    """results_dir/interventions.{json,md,png} (and interventions-tasks.png); the md keeps text outside its
    generated section."""
    results_dir = Path(results_dir)
    tasks, canvas = [r for r in runs if r["task"]], [r for r in runs if not r["task"]]
    write_json(results_dir / "interventions.json", {"runs": [_summary(r) for r in runs], "paper_toy": _paper()})
    parts = [_header(runs, images)]
    if tasks:
        groups = _grouped(tasks, lambda r: f"{r['task']} {r['label']}", bool)
        pooled(tasks, f"task zoo ({len(tasks)} models)", bool).plot(results_dir / "interventions-tasks.png")
        parts += ["### Synthetic tasks, per layer", layer_table(tasks), "### Synthetic tasks, per class"]
        parts += [class_table(groups, logits=False), "![The task zoo](interventions-tasks.png)"]
    if canvas:
        deep = lambda row: row["layer"] >= 1  # noqa: E731 -- block 0's sinks sit on raw patch embeddings: apart
        groups = _grouped(canvas, lambda r: r["label"], deep)
        groups["all"] = pooled(canvas, f"canvas zoo ({len(canvas)} models, layers >= 1)", deep)
        groups["all"].plot(results_dir / "interventions.png")
        parts += ["### Canvas image models, per class (layers >= 1)", class_table(groups, logits=True)]
        parts.append("![The canvas zoo](interventions.png)")
    generated = "<!-- sink-models:begin tables -->\n" + "\n\n".join(parts) + "\n<!-- sink-models:end tables -->\n"
    path = results_dir / "interventions.md"
    old = path.read_text() if path.exists() else "# The paper's causal signatures on our zoo\n\n"
    atomic_write(path, merge_sections(old, generated))


def _grouped(runs: list[dict], key: Callable[[dict], str], keep) -> dict[str, InterventionReport]:
    names = dict.fromkeys(key(run) for run in runs)
    return {name: pooled([run for run in runs if key(run) == name], name, keep) for name in names}


def _summary(run: dict) -> dict:
    """A run in the JSON: what `intervention_block` keeps of the metrics the md shows, the per-head means of
    final_patch_relrms (the figure's dots), the task MSE."""
    block = intervention_block(run["report"])
    block["by_class"] = {metric: block["by_class"][metric] for metric in ("donor_cosine", "kl", "top1_change")}
    block["by_class"]["final_patch_relrms"] = run["report"].by_class("final_patch_relrms")
    return _rounded({key: run.get(key) for key in ("name", "label", "seed", "task", "mse")} | block)


def _rounded(value):
    """4 significant digits for every float inside `value` (the file stays small; the runs differ in the 7th)."""
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _paper() -> list[dict]:
    return [
        {"task": task, "layer": layer, "output_change_rms": dict(zip(EDITS, effects, strict=True))}
        | {"donor_cosine": cosine, "mse": list(mse)}
        for (task, layer), (effects, cosine, mse) in PAPER_TOY.items()
    ]


def _header(runs: list[dict], images: int) -> str:
    checks = {name: max(run["report"].checks[name] for run in runs) for name in ("local_identity_max", "noop_max")}
    return (
        "Measured by `python eval/run.py --suite interventions` (`sink_models.paper.interventions`): one head edited "
        "at a time with its attention held fixed, the rest of the network run unchanged (docs/science.md section 8). "
        "Cells: final_patch_relrms, the relative RMS change of the final patch tokens (the sink's own token left "
        "out), the mean over heads of each head's mean over its events; heads are units, pooled over the seeds; a "
        f"head enters a class with at least {MIN_EVENTS} events of it. Donor cos: cosine between the mean patch change "
        "and the donor's mean final patch minus the own (both means over every patch, as in the paper's code), for the "
        "donor's sink value.\n\n"
        f"Synthetic-task models: every head, on {TASK_BATCHES * TASK_BATCH_SIZE} held-out sequences (as many more for "
        "the mean sink value); every (sequence, head) is an event at its dominant key, since the NOP task routes only "
        "its NOP queries (about half) to the null token and the 90% rule never fires there; the class rule "
        "(ratio_out, stable rank) decides. The MSE columns zero head 0's value at that key (as results/synthetic.md). "
        f"Canvas models: the heads `select_heads` picks (the 4 with the most events per class in layers >= 1, 1 in "
        f"block 0) on the first {images} held-out canvases, {images} more for the mean sink value; block 0 is left out "
        "of the table, as in the paper's figure.\n\n"
        f"Checks over every run: local identity max {checks['local_identity_max']:.1e} (float64; must be < 1e-8), "
        f"no-op edit max {checks['noop_max']:.1e} (relative change of an unedited re-run through the edit path).\n\n"
        "The paper's DINOv2 figures (`vit_causal/results/by_class.md`, the numbers of its Figure 6 / 18 captions) are "
        "not in its public repository, which holds the code that writes them (`vit_causal/analyze.py`, "
        "`figures/fig6_causal_interventions.py`) but no results; its claim (docs/science.md section 6): zeroing a NOP "
        "sink's value changes ~nothing downstream, zeroing a broadcast sink's value changes the output a lot, and a "
        "donor's sink value carries the donor's global information. The 'paper toy' rows are the stored outputs of "
        "its toy notebooks (`toy/notebooks/noop_causal_intervention.ipynb`, Table 2, NOP queries; "
        "`broadcast_causal_intervention.ipynb`, Table 3; d = 64, L = 32, one seed): absolute RMS output changes, "
        "not relative (the NOP queries' outputs have RMS ~1, the broadcast task's ~1.4), and the donor cosine against "
        "the donor's payload."
    )
