"""Model cards and `.eval_results` files from a small handmade results JSON (sink_models.evaluation.cards)."""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import EvalResultEntry, ModelCard, parse_eval_result_entries

from sink_models.diagnostics import SinkReport
from sink_models.evaluation.cards import ZOO_VERSION, eval_results_file, render_card

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "model_cards" / "template.md"


def layer(index, events=0, nop=0, broadcast=0, other=0, cls=0, register=0, patch=0, per_image=0.0, ratio=1.25):
    return {
        "layer": index,
        "events": events,
        "nop": nop,
        "broadcast": broadcast,
        "other": other,
        "cls": cls,
        "register": register,
        "patch": patch,
        "sinks_per_image": per_image,
        "cls_sink_rate": 0.0,
        "token_norm_max": 9.0,
        "token_norm_max_over_median": ratio,
    }


# Three layers on 4 images: none in layer 0, 6 events in layer 1 (4 NOP on CLS, 2 broadcast on registers), 2 other
# events on patches in layer 2.
RESULT = {
    "name": "vit-gp-penalty",
    "model": {
        "source": "zoo/vit-gp-penalty",
        "revision": None,
        "commit": None,
        "class": "SinkViTForImageClassification",
        "config_digest": "0123456789abcdef" * 4,
        "parameters": 123456,
        "attn_implementation": "sdpa",
        "zoo": True,
    },
    "dataset": {
        "name": "canvas-digits",
        "options": {"size": 64, "digit_size": 16, "noise": 0.1},
        "split": "test",
        "images": 4,
        "unreadable_images": 0,
    },
    "accuracy": {"top1": 0.75, "top5": 1.0, "images": 4},
    "accuracy_note": None,
    "sinks": {
        "images": 4,
        "sinks_per_image": 2.0,
        "nop_per_image": 1.0,
        "broadcast_per_image": 0.5,
        "other_per_image": 0.5,
        "sink_share": {"cls": 0.5, "register": 0.25, "patch": 0.25},
        "cls_sink_rate": 0.125,
    },
    "layers": [
        layer(0, ratio=1.5),
        layer(1, events=6, nop=4, broadcast=2, cls=4, register=2, per_image=1.5, ratio=2.0),
        layer(2, events=2, other=2, patch=2, per_image=0.5, ratio=12.3456),
    ],
    "heads": [],
    "training": {
        "model": {"variant": "gp", "size": "toy", "model_overrides": "{}"},
        "data": {"dataset": "canvas-digits", "dataset_options": '{"size": 64, "digit_size": 16, "noise": 0.1}'},
        "train": {"learning_rate": 0.002, "seed": 0, "common_mode_penalty": 0.5},
    },
    "stability": {
        "loss_spikes": 3,
        "largest_grad_norm": 18.25,
        "largest_activation": 4.5,
        "token_norm_max_over_median": 12.3456,
    },
    "versions": {"sink-models": "0.1.0"},
    "date": "2026-12-02",
}
REPORT = SinkReport(summary={}, heads=[], layers=RESULT["layers"], events=[], thresholds={}, model={})


def card(result: dict = RESULT) -> ModelCard:
    return render_card(result, REPORT, TEMPLATE, "someorg", "v2")


def without_penalty() -> dict:
    result = copy.deepcopy(RESULT)
    result["training"]["train"]["common_mode_penalty"] = 0.0
    return result


def test_the_card_shows_the_layers_with_sinks_the_canvas_the_stability_and_the_penalty():
    text = card().text
    assert (
        "| layer | events / image | NOP | broadcast | other | CLS | register | patch | token-norm max / median |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| 1 | 1.5 | 4 | 2 | 0 | 4 | 2 | 0 | 2 |\n"
        "| 2 | 0.5 | 0 | 0 | 2 | 0 | 0 | 2 | 12.3 |\n\nHeads with sink events"
    ) in text  # layer 0, without events, has no row
    assert "trained on `canvas-digits` (size=64, digit_size=16, noise=0.1)." in text
    assert "Dataset options: size=64, digit_size=16, noise=0.1." in text
    assert (
        "| loss spikes | largest grad norm | largest activation | token-norm max / median |\n"
        "|---|---|---|---|\n"
        "| 3 | 18.2 | 4.5 | 12.3 |\n"
    ) in text
    assert "The common-mode penalty was on (weight 0.5)" in text
    assert "common_mode_penalty: 0.5" in text  # the recipe
    for figure in ("events_by_head.png", "sink_types_by_layer.png", "diagnostic_plane.png"):
        assert f"]({figure})" in text
    assert 'from_pretrained("someorg/vit-gp-penalty", trust_remote_code=True, revision="v2")' in text


def test_a_card_without_the_penalty_or_any_sink_says_so():
    result = without_penalty()
    result["layers"] = [layer(0), layer(1)]
    result["stability"] = dict.fromkeys(result["stability"])  # not trained here: nothing recorded
    text = card(result).text
    assert "common-mode penalty" not in text
    assert "None: no layer has a sink event on these images." in text
    assert "| - | - | - | - |" in text


def test_the_eval_results_file_carries_the_model_index_numbers_and_parses_back():
    path, text = eval_results_file(RESULT)
    assert path == ".eval_results/canvas-digits.yaml"
    entries = parse_eval_result_entries(yaml.safe_load(text))
    where = "test split, 4 images"
    expected = [
        ("top1", 0.75, "Top-1 accuracy"),
        ("top5", 1.0, "Top-5 accuracy"),
        ("sinks_per_image", 2.0, "Sink events per image"),
        ("nop_per_image", 1.0, "NOP sinks per image"),
        ("broadcast_per_image", 0.5, "Broadcast sinks per image"),
        ("cls_sink_share", 0.5, "Share of sinks on CLS"),
        ("register_sink_share", 0.25, "Share of sinks on registers"),
        ("patch_sink_share", 0.25, "Share of sinks on patches"),
    ]
    assert entries == [
        EvalResultEntry("canvas-digits", task, value, date="2026-12-02", notes=f"{name}, {where}")
        for task, value, name in expected
    ]
    assert text.startswith("- dataset:\n    id: canvas-digits\n    task_id: top1\n  value: 0.75\n")
    # The card's model-index, written and read back, holds the same numbers under the same keys.
    metadata = ModelCard(str(card())).data.eval_results
    index = {r.metric_config or r.metric_type: r.metric_value for r in metadata}
    assert index == {entry.task_id: entry.value for entry in entries}
    assert {r.dataset_type for r in metadata} == {"canvas-digits"}


@pytest.mark.parametrize(("dataset", "path"), [("timm/mini-imagenet", ".eval_results/timm--mini-imagenet.yaml")])
def test_a_hub_dataset_gets_a_flat_file_name_and_no_accuracy_means_sink_metrics_only(dataset, path):
    result = copy.deepcopy(RESULT)
    result["dataset"]["name"], result["accuracy"] = dataset, None
    name, text = eval_results_file(result)
    entries = parse_eval_result_entries(yaml.safe_load(text))
    assert name == path and [e.dataset_id for e in entries] == [dataset] * 6
    assert [e.task_id for e in entries][:2] == ["sinks_per_image", "nop_per_image"]


DENSE = {
    "dataset": "canvas-digits",
    "split": "test",
    "layer": None,
    "classes": ["background", *"0123456789"],
    "miou": 0.331,
    "foreground_miou": 0.262,
    "accuracy": 0.975,
    "pixel_miou": None,
    "pixel_foreground_miou": None,
    "pixel_accuracy": None,
    "iou": {"0": 0.97, "1": 0.3},
    "settings": {"train_images": 12, "eval_images": 5, "min_share": 0.25, "optimizer": "lbfgs", "weight_decay": 0.0001,
                 "ignore_index": None, "features": "final normed patch tokens"},
}  # fmt: skip


def with_dense(**changes) -> dict:
    result = copy.deepcopy(RESULT)
    result["dense_probe"] = copy.deepcopy(DENSE) | changes
    return result


def test_the_dense_probe_is_a_segmentation_entry_of_the_model_index_and_the_eval_results_file():
    metadata = ModelCard(str(card(with_dense()))).data.eval_results
    segmentation = [r for r in metadata if r.task_type == "image-segmentation"]
    assert [(r.metric_type, r.metric_config, r.metric_value) for r in segmentation] == [
        ("mean_iou", "dense_probe_miou", 0.331),
        ("overall_accuracy", "dense_probe_accuracy", 0.975),
    ]
    assert {(r.dataset_type, r.dataset_split, r.task_name) for r in segmentation} == {
        ("canvas-digits", "test", "Semantic segmentation (linear probe on frozen patch tokens)")
    }
    assert len(metadata) == 8 + 2  # the accuracy and sink entries stay as they were
    _, text = eval_results_file(with_dense())
    entries = parse_eval_result_entries(yaml.safe_load(text))
    assert entries[-2:] == [
        EvalResultEntry("canvas-digits", "dense_probe_miou", 0.331, date="2026-12-02",
                        notes="mIoU (dense linear probe), test split, 5 images"),
        EvalResultEntry("canvas-digits", "dense_probe_accuracy", 0.975, date="2026-12-02",
                        notes="Patch accuracy (dense linear probe), test split, 5 images"),
    ]  # fmt: skip
    # A probe on another dataset is reported on that dataset and split.
    elsewhere = ModelCard(str(card(with_dense(dataset="org/segments", split="validation")))).data.eval_results
    assert {(r.dataset_name, r.dataset_split) for r in elsewhere if r.task_type == "image-segmentation"} == {
        ("org/segments", "validation")
    }


def test_the_dense_probe_section_shows_percent_scores_and_the_settings():
    text = card(with_dense(layer=-2)).text
    section = text[text.index("<!-- sink-models:begin dense_probe -->") : text.index("<!-- sink-models:begin sinks")]
    assert "## Dense probe" in section and "`canvas-digits` (test)" in section
    assert (
        "| mIoU | foreground mIoU | patch accuracy | pixel mIoU |\n"
        "|---|---|---|---|\n"
        "| 33.10% | 26.20% | 97.50% | - |\n"
    ) in section
    assert (
        "Settings: train_images=12, eval_images=5, min_share=0.25, optimizer=lbfgs, weight_decay=0.0001, "
        "features=final normed patch tokens, layer=block -2."
    ) in section
    assert text.index("## Evaluation") < text.index("## Dense probe") < text.index("## Attention sinks")


def test_the_committed_card_is_the_render_of_its_result_and_without_a_probe_loses_only_the_probe():
    result = json.loads((ROOT / "results" / "vit-plain.json").read_text())
    report = SinkReport(summary={}, heads=[], layers=result["layers"], events=[], thresholds={}, model={}, attention={})
    rendered = str(render_card(result, report, TEMPLATE, "sink-models", ZOO_VERSION))
    assert rendered == (ROOT / "model_cards" / "vit-plain" / "README.md").read_text()
    unprobed = {key: value for key, value in result.items() if key != "dense_probe"}
    without = str(render_card(unprobed, report, TEMPLATE, "sink-models", ZOO_VERSION))
    assert "dense_probe" not in without and "image-segmentation" not in without
    section = re.search(
        r"\n*<!-- sink-models:begin dense_probe -->.*?<!-- sink-models:end dense_probe -->", rendered, re.S
    )
    body = rendered.split("\n---\n", 1)[1]
    assert body.replace(section.group(0), "") == without.split("\n---\n", 1)[1]
