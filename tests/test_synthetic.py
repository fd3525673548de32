import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from reference import reference_tokens
from test_eval import run

from sink_models.synthetic import COLUMNS, EVAL_BATCH_SIZE, EVAL_BATCHES, load_task_model
from sink_models.training import DataArguments, ModelArguments, TrainArguments, train

SMALL = {"task_dim": 8, "task_length": 6}


@pytest.fixture(scope="module")
def task_models(tmp_path_factory) -> dict[str, Path]:
    """A NOP-task model with a headwise gate and a broadcast-task model with registers, a few steps each."""
    root = tmp_path_factory.mktemp("synthetic")
    folders = {}
    for task, variant in (("nop", "gated-headwise"), ("broadcast", "reg")):
        out = root / f"{task}-{variant}"
        train_args = TrainArguments(output_dir=str(out), max_steps=12, per_device_batch_size=16, learning_rate=3e-3)
        train(ModelArguments(variant=variant), DataArguments(dataset=task, **SMALL), train_args)
        folders[task] = out / "model"
    return folders


def held_out(task):
    batches = [task.batch(10**9 + index, EVAL_BATCH_SIZE) for index in range(EVAL_BATCHES)]
    pixels = torch.cat([b["pixel_values"] for b in batches])
    return pixels, torch.cat([b["targets"] for b in batches]), pixels.squeeze(2).transpose(1, 2)


def test_the_suite_writes_a_table_with_every_field(task_models, tmp_path, capsys):
    argv = ["--suite", "synthetic", "--synthetic_models", task_models["nop"], task_models["broadcast"]]
    code, out = run([*argv, "--results_dir", tmp_path], capsys)
    assert code == 0, out
    rows = json.loads((tmp_path / "synthetic.json").read_text())["rows"]
    assert [(r["task"], r["variant"], r["layer"]) for r in rows] == [
        ("nop", "gated-headwise", 1),
        ("broadcast", "reg", 1),
        ("broadcast", "reg", 2),
    ]
    nop, *broadcast = rows
    for row in rows:
        assert set(row) >= {key for key, _ in COLUMNS}
    assert None not in (nop["null_attention_nop"], nop["null_attention_active"], nop["gate_nop"], nop["gate_active"])
    assert nop["attention_jstar"] is None
    assert all(r["attention_jstar"] is not None and r["null_attention_nop"] is None for r in broadcast)
    assert all(r["gate_nop"] is None and r["gate_active"] is None for r in broadcast)  # no gate
    assert nop["attention_registers"] is None and nop["loss_registers_zeroed"] is None  # no registers
    text = (tmp_path / "synthetic.md").read_text()
    headings = [heading for _, heading in COLUMNS]
    assert "| " + " | ".join(headings) + " |" in text and text.count("| nop |") == 1
    assert (tmp_path / "synthetic.png").stat().st_size > 10_000


def test_routing_gate_and_losses_equal_an_independent_forward(task_models, tmp_path, capsys):
    assert (
        run(["--suite", "synthetic", "--synthetic_models", task_models["nop"], "--results_dir", tmp_path], capsys)[0]
        == 0
    )
    row = json.loads((tmp_path / "synthetic.json").read_text())["rows"][0]
    model, task, _ = load_task_model(task_models["nop"])
    pixels, targets, tokens = held_out(task)
    prefix = model.config.num_prefix_tokens
    intact = reference_tokens(model.sink_vit, pixels)
    attention = intact["attentions"][0][:, 0]  # images, queries, keys (head 0)
    active = (tokens @ task.direction) > 0
    to_null = attention[:, prefix:, 0]
    assert row["null_attention_nop"] == pytest.approx(float(to_null[~active].mean()), abs=1e-6)
    assert row["null_attention_active"] == pytest.approx(float(to_null[active].mean()), abs=1e-6)
    gate = intact["gates"][0][:, prefix:, 0]
    assert row["gate_nop"] == pytest.approx(float(gate[~active].mean()), abs=1e-6)

    def loss(result):
        predictions = result["residual"][:, prefix:].float()  # the toy's output is its residual stream
        return float(torch.nn.functional.mse_loss(predictions, targets))

    sinks = attention.mean(dim=1).argmax(dim=-1)  # each image's dominant key: most mean attention received
    assert row["loss"] == pytest.approx(loss(intact), rel=1e-5)
    zeroed = reference_tokens(model.sink_vit, pixels, zero_values={0: sinks})
    assert row["loss_sink_zeroed"] == pytest.approx(loss(zeroed), rel=1e-5)
    shares = torch.bincount(torch.where(sinks == 0, 0, torch.where(sinks < prefix, 1, 2)), minlength=3) / len(sinks)
    assert [row["sink_cls"], row["sink_register"], row["sink_patch"]] == pytest.approx(shares.tolist())


def test_retraining_from_the_recorded_recipe_with_two_seeds(task_models, tmp_path, capsys):
    argv = ["--suite", "synthetic", "--synthetic_models", task_models["nop"], "--retrain_steps", 3, "--seeds", 0, 1]
    code, out = run([*argv, "--results_dir", tmp_path, "--work_dir", tmp_path / "runs"], capsys)
    assert code == 0, out
    data = json.loads((tmp_path / "synthetic.json").read_text())
    assert [(r["seed"], r["variant"]) for r in data["rows"]] == [(0, "gated-headwise"), (1, "gated-headwise")]
    for seed in (0, 1):
        run_dir = tmp_path / "runs" / f"nop-gated-headwise-seed{seed}"
        assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
        args = json.loads((run_dir / "model" / "training_args.json").read_text())
        assert args["train"]["seed"] == seed and args["data"] == asdict(DataArguments(dataset="nop", **SMALL))


def test_an_image_classifier_is_not_a_synthetic_model(tmp_path, capsys):
    zoo = Path(__file__).resolve().parents[1] / "zoo" / "vit-plain"
    code, out = run(["--suite", "synthetic", "--synthetic_models", zoo, "--results_dir", tmp_path], capsys)
    assert code == 2 and "was trained on 'digits'; allowed: the nop or broadcast task" in out
    assert not (tmp_path / "synthetic.json").exists()


def test_attention_to_jstar_equals_an_independent_forward(task_models, tmp_path, capsys):
    argv = ["--suite", "synthetic", "--synthetic_models", task_models["broadcast"], "--results_dir", tmp_path]
    assert run(argv, capsys)[0] == 0
    rows = json.loads((tmp_path / "synthetic.json").read_text())["rows"]
    model, task, _ = load_task_model(task_models["broadcast"])
    pixels, targets, tokens = held_out(task)
    prefix = model.config.num_prefix_tokens  # CLS + 4 registers
    jstar = (tokens @ task.direction).argmax(dim=1)
    for layer, (row, attention) in enumerate(
        zip(rows, reference_tokens(model.sink_vit, pixels)["attentions"], strict=True)
    ):
        queries = attention[:, 0, prefix:]  # images, task queries, keys
        expected = queries[torch.arange(len(jstar)), :, prefix + jstar].mean()
        assert row["attention_jstar"] == pytest.approx(float(expected), abs=1e-6)
        assert row["attention_registers"] == pytest.approx(float(queries[..., 1:prefix].sum(-1).mean()), abs=1e-6)
        registers = torch.arange(1, prefix).expand(len(pixels), -1)
        residual = reference_tokens(model.sink_vit, pixels, zero_values={layer: registers})["residual"]
        expected = torch.nn.functional.mse_loss(residual[:, prefix:].float(), targets)
        assert row["loss_registers_zeroed"] == pytest.approx(float(expected), rel=1e-5)
