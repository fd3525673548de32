"""The causal signatures on the zoo (`eval/run.py --suite interventions`) and the card's opt-in causal table
(`eval/run.py --interventions`)."""

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import images, tiny_config
from huggingface_hub import ModelCard
from planted import plant

from sink_models import SinkViTForImageClassification
from sink_models.checkpoint import save_checkpoint
from sink_models.training import DataArguments, ModelArguments, TrainArguments

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("eval_run_zoo", ROOT / "eval" / "run.py")
eval_run = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(eval_run)


def run(argv, capsys) -> tuple[int, str]:
    code = eval_run.cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def relrms(entry: dict, klass: str, edit: str) -> float:
    return next(e for e in entry["by_class"]["final_patch_relrms"] if (e["class"], e["edit"]) == (klass, edit))["mean"]


def test_the_suite_shows_the_nop_broadcast_contrast_on_the_task_and_canvas_zoo(tmp_path, capsys):
    models = [ROOT / "zoo" / name for name in ("nop-plain", "broadcast-plain", "vit-plain")]
    argv = ["--suite", "interventions", "--intervention_models", *models, "--intervention_images", 16]
    code, out = run([*argv, "--results_dir", tmp_path], capsys)
    assert code == 0, out
    text = (tmp_path / "interventions.md").read_text()
    for row in ("| nop | plain | L1 | 512 / 0 / 0 |", "| broadcast | plain | L2 |", "| nop | paper toy (RMS) | L1 |"):
        assert row in text
    assert "| nop plain | nop | 1 / 512 |" in text and "| broadcast plain | broadcast |" in text
    assert "| plain | broadcast |" in text and "| all | broadcast |" in text  # the canvas model, layers >= 1
    assert {p.name for p in tmp_path.glob("*.png")} == {"interventions.png", "interventions-tasks.png"}
    assert not list(tmp_path.glob("vit-*.json"))  # the suite evaluates no model: only results/interventions.*

    runs = {r["name"]: r for r in json.loads((tmp_path / "interventions.json").read_text())["runs"]}
    nop, broadcast = runs["nop-plain"], runs["broadcast-plain"]
    # The paper's signatures: zeroing the NOP sink's value moves the predictions ~1%, the broadcast sink's ~100%;
    # the task loss stays for the NOP task and breaks for the broadcast one (layer 2); the donor transplants.
    assert relrms(nop, "nop", "zero_sink_value") < 0.02 < 0.5 < relrms(broadcast, "broadcast", "zero_sink_value")
    assert relrms(nop, "nop", "redirect_sink_attention") > 0.3  # redirecting the NOP queries does matter
    ((base, zeroed),) = nop["mse"]
    assert zeroed == pytest.approx(base, rel=0.02)
    assert broadcast["mse"][1][1] > 20 * broadcast["mse"][1][0]
    per_head = {(e["edit"], e["class"]): e for e in broadcast["by_class"]["donor_cosine"]}
    assert per_head["donor_sink_value", "broadcast"]["mean"] > 0.3
    for entry in runs.values():
        assert entry["checks"]["local_identity_max"] < 1e-8 and entry["checks"]["noop_max"] < 1e-5
    assert runs["vit-plain"]["settings"]["images"] == 16 and runs["vit-plain"]["task"] is None


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A tiny SinkViT for the 10 digits with a planted NOP sink (head 0) and broadcast sink (head 1) on CLS."""
    torch.manual_seed(0)
    labels = {i: str(3 * i % 10) for i in range(10)}  # class i is digit 3i mod 10: labels mapped by name
    config = tiny_config("plain", num_labels=10, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = SinkViTForImageClassification(config).eval()
    x = images(config, batch=2)
    plant(model, x, head=0, target=0, kind="nop")
    plant(model, x, head=1, target=0, kind="broadcast")
    folder = tmp_path_factory.mktemp("ckpt") / "vit-planted"
    save_checkpoint(model, folder)
    groups = {
        "model": ModelArguments(variant="plain"),
        "data": DataArguments(dataset="digits"),
        "train": TrainArguments(),
    }
    (folder / "training_args.json").write_text(json.dumps({k: asdict(v) for k, v in groups.items()}))
    return folder


def test_the_card_gets_the_causal_table_only_when_asked(planted, tmp_path, capsys):
    argv = ["--model", planted, "--trust_remote_code", "--max_images", 16, "--results_dir", tmp_path / "results"]
    code, out = run([*argv, "--cards_dir", tmp_path / "plain", "--batch_size", 8], capsys)
    assert code == 0, out
    card = ModelCard.load(tmp_path / "plain" / "vit-planted" / "README.md").text
    assert "interventions" not in card and "Causal" not in card
    assert "interventions" not in json.loads((tmp_path / "results" / "vit-planted.json").read_text())

    asked = ["--interventions", "--intervention_images", 6, "--cards_dir", tmp_path / "asked"]
    code, out = run([*argv, *asked], capsys)
    assert code == 0, out
    result = json.loads((tmp_path / "results" / "vit-planted.json").read_text())
    block = result["interventions"]
    assert block["settings"]["images"] == 6 and block["checks"]["local_identity_max"] < 1e-8
    # The planted heads (layer 0): the NOP sink's value edits change nothing, the broadcast sink's move every token.
    assert relrms(block, "nop", "zero_sink_value") < 1e-5 < 0.01 < relrms(block, "broadcast", "zero_sink_value")
    assert all("per_head" not in entry for entry in block["by_class"]["final_patch_relrms"])
    card = ModelCard.load(tmp_path / "asked" / "vit-planted" / "README.md").text
    section = card[card.index("<!-- sink-models:begin interventions -->") : card.index("<!-- sink-models:end inter")]
    assert "## Causal interventions" in section and "| edit | NOP | broadcast |" in section
    assert "| zero_sink_value | " in section and "(1 / 6)" in section
    assert card.index("end interventions") < card.index("begin provenance")  # before the card's last section
