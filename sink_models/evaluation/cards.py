"""Model cards from evaluation results: `model-index` metadata (accuracy, sink metrics and the dense probe's mIoU),
tables and figures, and the same numbers as the Hub's `.eval_results/*.yaml` entries.

The card is rendered from model_cards/template.md with huggingface_hub's ModelCard. Everything the template
generates sits between `<!-- sink-models:begin NAME -->` and `<!-- sink-models:end NAME -->` markers: a new run
replaces those sections and the generated metadata keys, and keeps whatever a person wrote outside them.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import yaml
from huggingface_hub import EvalResult, EvalResultEntry, ModelCard, ModelCardData, eval_result_entries_to_yaml

from ..diagnostics import SinkReport
from ..diagnostics.plots import FIGURES
from ..files import atomic_write
from ..vocabulary import CLASSES

ZOO_VERSION = "v2"  # the tag every model repo gets, and that the model cards' usage snippets pin
SECTION = re.compile(r"<!-- sink-models:begin (\w+) -->.*?<!-- sink-models:end \1 -->", re.DOTALL)
# model-index entries of the sink metrics: (metric type, display name, value from the results' sink summary)
SINK_METRICS = (
    ("sinks_per_image", "Sink events per image", lambda s: s["sinks_per_image"]),
    ("nop_per_image", "NOP sinks per image", lambda s: s["nop_per_image"]),
    ("broadcast_per_image", "Broadcast sinks per image", lambda s: s["broadcast_per_image"]),
    ("cls_sink_share", "Share of sinks on CLS", lambda s: s["sink_share"]["cls"]),
    ("register_sink_share", "Share of sinks on registers", lambda s: s["sink_share"]["register"]),
    ("patch_sink_share", "Share of sinks on patches", lambda s: s["sink_share"]["patch"]),
)
# model-index entries of the dense probe: (key, metric type, display name, field of the results' dense_probe block);
# its `accuracy` is the share of all held-out patches labelled right, evaluate's `overall_accuracy` of `mean_iou`.
DENSE_METRICS = (
    ("dense_probe_miou", "mean_iou", "mIoU (dense linear probe)", "miou"),
    ("dense_probe_accuracy", "overall_accuracy", "Patch accuracy (dense linear probe)", "accuracy"),
)
# model-index task name of each task type the card reports (None: the type says enough).
TASK_NAMES = {
    "image-classification": None,
    "image-feature-extraction": "Attention-sink diagnostics",
    "image-segmentation": "Semantic segmentation (linear probe on frozen patch tokens)",
}
SINK_COLUMNS = ["images", "sinks / image", "NOP / image", "broadcast / image", "other / image"]
SINK_COLUMNS += ["CLS", "register", "patch", "CLS sink rate"]


def hub_usage(result: dict, hub_org: str, hub_revision: str) -> tuple[str, str | None, bool]:
    """(repo id or folder, revision or None, remote code?) that the card's snippet loads.

    A zoo model is published as `hub_org/<name>` under the tag `hub_revision`; any other checkpoint is loaded
    from where it was evaluated.
    """
    model = result["model"]
    ours = model["class"].startswith("SinkViT")
    if model.get("zoo"):
        return f"{hub_org}/{result['name']}", hub_revision, ours
    return model["source"], model["revision"], ours


class Metric(NamedTuple):
    """One number the card reports: its key (the `.eval_results` entry's `task_id`, and the model-index `config` where
    it differs from the metric type), model-index metric type, display name, task type and value, and where it was
    measured: dataset, split and images."""

    key: str
    metric_type: str
    name: str
    task: str
    value: float
    dataset: str
    split: str
    images: int


def metrics(result: dict) -> list[Metric]:
    """The numbers that the card's `model-index` and its `.eval_results` file both report: top-1 / top-5 accuracy
    (where measured), the sink metrics and the dense probe's mIoU and patch accuracy (where measured)."""
    dataset = result["dataset"]
    where = (dataset["name"], dataset["split"], dataset["images"])
    accuracy = result["accuracy"] or {}
    found = [
        Metric(key, "accuracy", name, "image-classification", accuracy[key], *where)
        for key, name in (("top1", "Top-1 accuracy"), ("top5", "Top-5 accuracy"))
        if key in accuracy
    ]
    found += [
        Metric(key, key, name, "image-feature-extraction", read(result["sinks"]), *where)
        for key, name, read in SINK_METRICS
    ]
    return found + _dense_metrics(result.get("dense_probe"))


def _dense_metrics(block: dict | None) -> list[Metric]:
    if block is None:  # not measured
        return []
    where = (block["dataset"], block["split"], block["settings"]["eval_images"])
    return [
        Metric(key, kind, name, "image-segmentation", block[field], *where) for key, kind, name, field in DENSE_METRICS
    ]


def card_data(result: dict) -> ModelCardData:
    """The card's metadata: `model-index` with the `metrics`, one entry per task and dataset."""
    results = [
        EvalResult(
            task_type=m.task,
            task_name=TASK_NAMES[m.task],
            dataset_type=m.dataset,
            dataset_name=m.dataset,
            dataset_split=m.split,
            metric_type=m.metric_type,
            metric_config=None if m.key == m.metric_type else m.key,
            metric_name=m.name,
            metric_value=m.value,
        )
        for m in metrics(result)
    ]
    ours = result["model"]["class"].startswith("SinkViT")
    return ModelCardData(
        model_name=result["name"],
        library_name="transformers",
        pipeline_tag="image-classification" if result["model"]["class"].endswith("Classification") else None,
        tags=["vision", "attention-sinks", "sink-models"] + (["custom_code"] if ours else []),
        license="apache-2.0" if ours else None,
        eval_results=results,
    )


def eval_result_entries(result: dict) -> list[EvalResultEntry]:
    """The card's numbers as `.eval_results` entries: the format holds one value per (dataset, task), so each
    metric is a task of its own, `task_id` its key; the note names it, the split and the images."""
    return [
        EvalResultEntry(
            dataset_id=m.dataset,
            task_id=m.key,
            value=m.value,
            date=result["date"],
            notes=f"{m.name}, {m.split} split, {m.images} images",
        )
        for m in metrics(result)
    ]


def eval_results_file(result: dict) -> tuple[str, str]:
    """(path in the model repo, YAML text) of the `.eval_results` file: one per evaluation dataset."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "--", result["dataset"]["name"]).strip("-.")
    text = yaml.safe_dump(eval_result_entries_to_yaml(eval_result_entries(result)), sort_keys=False)
    return f".eval_results/{stem}.yaml", text


def render_card(result: dict, report: SinkReport, template: Path, hub_org: str, hub_revision: str) -> ModelCard:
    """The card of `result` (eval/run.py's results JSON) from `template`, its figures named after `report`'s PNGs."""
    repo, revision, remote = hub_usage(result, hub_org, hub_revision)
    card = ModelCard.from_template(
        card_data(result),
        template_path=str(template),
        title=result["name"],
        description=_description(result),
        usage=_usage(result, repo, revision, remote),
        evaluation=_evaluation(result),
        sinks=markdown_table(SINK_COLUMNS, [[result["sinks"]["images"], *_sink_row(result["sinks"])]]),
        layers=_layers(result["layers"]),
        heads=_heads(result["heads"]),
        figures=_figures(report),
        stability=_stability(result["stability"]),
        training=_training(result),
        provenance=_provenance(result),
    )
    # Measurements a run may skip (no block: not measured): (block, its section, the template section it precedes).
    extras = (("dense_probe", _dense_probe, "sinks"), ("interventions", _interventions, "provenance"))
    optional = [extra for extra in extras if result.get(extra[0]) is not None]
    if not optional:
        return card  # the template alone: cards of runs without these measurements stay as they were
    text = str(card)
    for name, render, before in optional:
        section = f"<!-- sink-models:begin {name} -->\n{render(result[name])}\n<!-- sink-models:end {name} -->\n\n"
        at = text.index(f"<!-- sink-models:begin {before} -->")
        text = text[:at] + section + text[at:]
    return ModelCard(text)


def write_card(card: ModelCard, report: SinkReport, folder: str | os.PathLike) -> Path:
    """Write `card` as folder/README.md with the report's PNGs beside it, atomically; an existing card keeps the
    text a person wrote outside the generated sections (see `merge_cards`)."""
    folder = Path(folder)
    path = folder / "README.md"
    if path.exists():
        card = merge_cards(ModelCard.load(path), card)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".figures.", dir=folder))
    try:
        written = {p.name for p in report.plot(staging)}
        for stale in folder.glob("attention_layer*.png"):
            if stale.name not in written:
                stale.unlink()
        for name in written:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return atomic_write(path, str(card))


def merge_cards(old: ModelCard, new: ModelCard) -> ModelCard:
    """`old` with the generated sections and metadata keys of `new`; everything else of `old` kept as it is."""
    metadata = {**old.data.to_dict(), **new.data.to_dict()}
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return ModelCard(f"---\n{header}---\n{merge_sections(old.text, new.text)}")


def merge_sections(old: str, new: str) -> str:
    """`old` with each generated section replaced by the one of the same name in `new`; the rest of `old` kept.

    A generated section that `old` lacks (new in this version, or deleted by a person, markers and all) goes in after
    the generated section that precedes it in `new`, or at the end when `old` has none of those.
    """
    fresh = {match.group(1): match.group(0) for match in SECTION.finditer(new)}
    seen = set()

    def replace(match: re.Match) -> str:
        seen.add(match.group(1))
        return fresh.get(match.group(1), match.group(0))

    body = SECTION.sub(replace, old)
    names = list(fresh)
    for index, name in enumerate(names):
        if name in seen:
            continue
        before = next((other for other in reversed(names[:index]) if other in seen), None)
        ends = {match.group(1): match.end() for match in SECTION.finditer(body)}
        if before is None:
            body = body.rstrip("\n") + "\n\n" + fresh[name] + "\n"
        else:
            body = body[: ends[before]] + "\n\n" + fresh[name] + body[ends[before] :]
        seen.add(name)
    return body


def _sink_row(summary: dict) -> list:
    share = summary["sink_share"]
    per_image = [summary[f"{k}_per_image"] for k in ("sinks", *CLASSES)]
    return [*per_image, share["cls"], share["register"], share["patch"], summary["cls_sink_rate"]]


def usage_section(result: dict, repo: str, revision: str) -> str:
    """The card's generated usage section for a checkpoint published as `repo` at `revision`."""
    remote = result["model"]["class"].startswith("SinkViT")
    return f"<!-- sink-models:begin usage -->\n{_usage(result, repo, revision, remote)}\n<!-- sink-models:end usage -->"


def _description(result: dict) -> str:
    model, training = result["model"], result["training"] or {}
    parts = [f"A `{model['class']}` with {model['parameters']:,} parameters"]
    if training:
        variant, size = training["model"]["variant"], training["model"]["size"]
        data = training["data"]
        options = _options(json.loads(data.get("dataset_options") or "{}"))
        parts.append(
            f"(SinkViT variant `{variant}`, size `{size}`), trained on `{data['dataset']}`"
            + (f" ({options})" if options else "")
        )
    text = " ".join(parts) + "."
    penalty = (training.get("train") or {}).get("common_mode_penalty", 0.0)
    if penalty > 0:
        text += (
            f" The common-mode penalty was on (weight {penalty:g}): the paper's Eq. 5, summed over layers, penalised"
            " the part of each attention update that every token shares, so that attention does not broadcast."
        )
    text += (
        " This card carries its accuracy and its attention sinks, classified per layer and head into adaptive NOPs"
        " (a head routes to a token with a negligible value to do nothing) and broadcasts (a sink gathers global"
        " information and hands it to every token), as measured by [sink-models](https://github.com/sink-models)."
    )
    return text


def _options(options: dict) -> str:
    """A dataset's options (or the dense probe's settings) as `key=value` pairs, in the order given."""
    return ", ".join(f"{key}={value}" for key, value in options.items())


def _usage(result: dict, repo: str, revision: str | None, remote: bool) -> str:
    head = result["model"]["class"].endswith("Classification")
    auto = "AutoModelForImageClassification" if head else "AutoModel"
    options = (", trust_remote_code=True" if remote else "") + (f', revision="{revision}"' if revision else "")
    pin = f', revision="{revision}"' if revision else ""
    lines = [
        f"from transformers import AutoImageProcessor, {auto}",
        "",
        f'model = {auto}.from_pretrained("{repo}"{options})',
        f'processor = AutoImageProcessor.from_pretrained("{repo}"{pin})',
        'inputs = processor(images, return_tensors="pt")',
        "outputs = model(**inputs)" + ("  # outputs.logits" if head else "  # outputs.last_hidden_state"),
        "",
        "# its sinks, with sink-models (pip install sink-models):",
        "from sink_models.diagnostics import diagnose",
        "",
        "report = diagnose(model, [inputs])  # batches: processor outputs",
        "print(report.summary)",
    ]
    return "## Usage\n\n```python\n" + "\n".join(lines) + "\n```"


def _evaluation(result: dict) -> str:
    dataset = result["dataset"]
    options = _options(dataset["options"])
    where = f"`{dataset['name']}`" + (f" ({options})" if options else "")
    where += f", split `{dataset['split']}`, {dataset['images']} images"
    accuracy = result["accuracy"]
    if accuracy is None:
        return f"On {where}: no accuracy, {result['accuracy_note']}."
    columns = ["dataset", "images", "top-1"] + (["top-5"] if "top5" in accuracy else [])
    row = [f"`{dataset['name']}` ({dataset['split']})", accuracy["images"], f"{accuracy['top1']:.2%}"]
    if "top5" in accuracy:
        row.append(f"{accuracy['top5']:.2%}")
    table = markdown_table(columns, [row])
    return f"Dataset options: {options}.\n\n{table}" if options else table


def _layers(layers: list[dict]) -> str:
    rows = [
        [r["layer"], r["sinks_per_image"], r["nop"], r["broadcast"], r["other"], r["cls"], r["register"], r["patch"]]
        + [r["token_norm_max_over_median"]]
        for r in layers
        if r["events"]
    ]
    if not rows:
        return "None: no layer has a sink event on these images."
    columns = ["layer", "events / image", "NOP", "broadcast", "other", "CLS", "register", "patch"]
    return markdown_table(columns + ["token-norm max / median"], rows)


def _heads(heads: list[dict]) -> str:
    rows = [
        [h["layer"], h["head"], h["events"], h["nop"], h["broadcast"], h["other"], h["cls"], h["register"], h["patch"]]
        + [h["max_inflow"], h["ratio_out"], h["stable_rank"], h["gate_mean"]]
        for h in heads
        if h["events"]
    ]
    if not rows:
        return "None: no head routes 90% of its queries to one token on these images."
    columns = ["layer", "head", "events", "NOP", "broadcast", "other", "CLS", "register", "patch"]
    return markdown_table(columns + ["max inflow", "median ratio_out", "median stable rank", "mean gate"], rows)


def _figures(report: SinkReport) -> str:
    lines = [f"![{caption}]({name})" for name, caption in FIGURES.items()]
    if report.attention is not None:
        per_layer = [row["events"] for row in report.layers]
        layer = max(range(len(per_layer)), key=lambda i: (per_layer[i], i))
        lines.append(f"![Mean attention each token receives, per head, layer {layer}](attention_layer{layer}.png)")
    return "\n\n".join(lines)


def _interventions(block: dict) -> str:
    """The compact causal table: final_patch_relrms per edit (rows) and sink class (columns), `mean (heads /
    events)`, and the checks."""
    cells = {(e["edit"], e["class"]): e for e in block["by_class"]["final_patch_relrms"]}
    classes = [c for c in CLASSES if any(k[1] == c for k in cells)]
    edits = [e for e in block["settings"]["edits"] if any(k[0] == e for k in cells)]
    rows = [[edit, *(_causal_cell(cells.get((edit, c))) for c in classes)] for edit in edits]
    settings, checks = block["settings"], block["checks"]
    intro = (
        "## Causal interventions\n\nOne sink head edited at a time with its attention held fixed, the rest of the "
        f"network run unchanged (the paper's single-head edits), on {settings['images']} evaluation images; the heads "
        "are those with the most NOP and broadcast events. Relative RMS change of the final patch tokens (the sink's "
        "own token left out): the mean over heads of each head's mean over its sink events, with (heads / events). A "
        "NOP sink's value edits should change nothing; a broadcast sink's should move every token."
    )
    if not rows:
        return intro + "\n\nNone: no selected head has a sink event on these images."
    table = markdown_table(["edit", *(c if c != "nop" else "NOP" for c in classes)], rows)
    check = (
        f"Checks: local identity max {checks['local_identity_max']:.1e} (float64, must be < 1e-8), no-op edit "
        f"max {checks['noop_max']:.1e} (relative change of an unedited re-run)."
    )
    return f"{intro}\n\n{table}\n\n{check}"


def _dense_probe(block: dict) -> str:
    """The dense probe's scores (percent) and its settings on one line."""
    intro = (
        "## Dense probe\n\nA linear segmentation probe on the frozen patch tokens, scored on held-out "
        f"`{block['dataset']}` ({block['split']}) images: a patch's label is the class covering at least min_share of "
        "it, else background; mIoU is over the classes present, background included as in Pascal VOC, foreground mIoU "
        "without it, and pixel mIoU scores the probe's logits upsampled to pixels."
    )
    scores = [block["miou"], block["foreground_miou"], block["accuracy"], block.get("pixel_miou")]
    table = markdown_table(
        ["mIoU", "foreground mIoU", "patch accuracy", "pixel mIoU"],
        [[None if value is None else f"{value:.2%}" for value in scores]],
    )
    settings = {key: value for key, value in block["settings"].items() if value is not None}
    settings["layer"] = "final output" if block.get("layer") is None else f"block {block['layer']}"
    return f"{intro}\n\n{table}\n\nSettings: {_options(settings)}."


def _causal_cell(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['mean']:.3g} ({entry['heads']} / {entry['events']})"


def _stability(stability: dict) -> str:
    columns = ["loss spikes", "largest grad norm", "largest activation", "token-norm max / median"]
    keys = ("loss_spikes", "largest_grad_norm", "largest_activation", "token_norm_max_over_median")
    return markdown_table(columns, [[stability[key] for key in keys]])


def _training(result: dict) -> str:
    training = result["training"]
    if not training:
        return "Not trained by sink-models (no recorded recipe)."
    recipe = {**training["model"], **training["data"], **training["train"]}
    text = yaml.safe_dump(recipe, sort_keys=False).rstrip()
    return f"Trained with `accelerate launch train/run.py` and these settings:\n\n```yaml\n{text}\n```"


def _provenance(result: dict) -> str:
    versions = ", ".join(f"{name} {value}" for name, value in result["versions"].items() if value)
    return (
        f"Generated by `accelerate launch eval/run.py` on {result['date']} ({versions}); config digest "
        f"`{result['model']['config_digest'][:16]}`, attention backend `{result['model']['attn_implementation']}`. "
        f"The numbers above are in `results/{result['name']}.json` of the sink-models repository."
    )


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A Markdown table; floats with 3 significant digits, None as '-'."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
