import importlib.util
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference import reference_tokens
from test_eval import run

from sink_models.paper.synthetic import (
    COLUMNS,
    EVAL_BATCH_SIZE,
    EVAL_BATCHES,
    analyse,
    arms_table,
    load_task_model,
    transfer_cosine,
)
from sink_models.tasks import SinkTask, TokenRegressor
from sink_models.training import DataArguments, ModelArguments, TrainArguments, train

ROOT = Path(__file__).resolve().parents[1]
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
    assert all(r["penalty"] == 0.0 for r in rows)  # trained before / without the common-mode penalty
    assert all(r["dmse_remove_global"] is None and r["cosine_via_g"] is None for r in rows)  # no global pathway
    assert nop["cosine_via_sink"] is None and None not in (nop["inflow"], nop["dmse_remove_attention"])
    assert all(None not in (r["inflow"], r["dmse_remove_attention"], r["cosine_via_sink"]) for r in broadcast)
    text = (tmp_path / "synthetic.md").read_text()
    headings = [heading for _, heading in COLUMNS]
    assert "| " + " | ".join(headings) + " |" in text and text.count("| nop |") == 1
    assert (tmp_path / "synthetic.png").stat().st_size > 10_000
    assert "None of these models is one of the paper's controlled broadcast arms." in text  # reg is not an arm


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
    zoo = ROOT / "zoo" / "vit-plain"
    dataset = json.loads((zoo / "training_args.json").read_text())["data"]["dataset"]  # digits or canvas-digits
    code, out = run(["--suite", "synthetic", "--synthetic_models", zoo, "--results_dir", tmp_path], capsys)
    assert code == 2 and f"was trained on {dataset!r}; allowed: the nop or broadcast task" in out
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


def toy_forward(model, tokens, layer=None, edit=None, donor=None):
    """A TokenRegressor without registers, gate or LayerScale, from its parameters in float64: the predictions and, per
    layer, the attention map, head values and pathway state. `edit` applies to `layer` only: "attention" or "global"
    zeroes that update; "value" puts donor[0] (sequences, d) at the positions donor[1]; "state" puts g = donor."""
    p = {name: t.detach().double() for name, t in model.sink_vit.named_parameters()}
    pos = p["embeddings.position_embeddings"][0]
    d = model.config.hidden_size
    x = tokens.double() @ p["embeddings.patch_embeddings.projection.weight"].reshape(d, d).T + pos[1:]
    h = torch.cat([(p["embeddings.cls_token"][0] + pos[:1]).expand(len(x), 1, d), x], dim=1)
    seen = []
    for i in range(model.config.num_hidden_layers):
        w = {name.removeprefix(f"layers.{i}."): t for name, t in p.items() if name.startswith(f"layers.{i}.")}
        z = F.layer_norm(h, (d,), w["norm1.weight"], w["norm1.bias"], model.config.layer_norm_eps)
        q, k, v = (z @ w[f"attention.{n}_proj.weight"].T for n in "qkv")
        if i == layer and edit == "value":
            v = v.clone()
            v[torch.arange(len(v)), donor[1]] = donor[0]
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
        attention = a @ v @ w["attention.o_proj.weight"].T
        pi = torch.softmax(z @ w["global_pathway.score_proj.weight"].T, dim=1)
        g = (pi * (z @ w["global_pathway.value_proj.weight"].T)).sum(dim=1)
        if i == layer and edit == "state":
            g = donor
        recipients = torch.sigmoid(z @ w["global_pathway.gate_proj.weight"].T + w["global_pathway.gate_proj.bias"])
        pathway = recipients * (g @ w["global_pathway.out_proj.weight"].T)[:, None]
        seen.append({"attention": a, "value": v, "state": g})
        updates = {"attention": attention, "global": pathway}
        if i == layer and edit in updates:
            updates[edit] = 0
        h = h + updates["attention"] + updates["global"]
        m = F.layer_norm(h, (d,), w["norm2.weight"], w["norm2.bias"], model.config.layer_norm_eps)
        h = h + F.gelu(m @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]) @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]
    return h[:, 1:], seen


def test_the_arm_measures_equal_an_independent_forward():
    task = SinkTask("broadcast", dim=8, length=6, seed=3)
    # A wide initialisation, so that every branch moves the outputs visibly. Then a planted circuit, so that the
    # cosines are far from 0: both layers and both pathways share W_O W_V, the pathway pools (mostly) j*, and the
    # task's map R is that W_O W_V, so a donor's j* moves each output towards the donor's target.
    config = task.model_config(global_pathway_dim=8, initializer_range=0.4)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = TokenRegressor(config).eval()
    first = model.sink_vit.layers[0].attention
    with torch.no_grad():
        for block in model.sink_vit.layers:
            for value in (block.attention.v_proj, block.global_pathway.value_proj):
                value.weight.copy_(first.v_proj.weight)
            for out in (block.attention.o_proj, block.global_pathway.out_proj):
                out.weight.copy_(first.o_proj.weight)
            block.global_pathway.score_proj.weight.copy_(10 * task.direction)
    task.rotation = (first.o_proj.weight @ first.v_proj.weight).T.detach()
    rows = analyse(model, task, "toy", "gp", 0, penalty=1.0)  # float32; the MSEs are ~10, so dMSE is good to ~1e-5
    pixels, targets, tokens = held_out(task)
    count = len(tokens)
    # Each sequence's donor is the next sequence of its own batch of EVAL_BATCH_SIZE, wrapping around.
    donor = torch.arange(count).view(EVAL_BATCHES, -1).roll(-1, dims=1).flatten()
    sequences = torch.arange(count)
    jstar = (tokens @ task.direction).argmax(dim=1)
    desired = (tokens[donor, jstar[donor]] - tokens[sequences, jstar]).double() @ task.rotation.double()
    base, seen = toy_forward(model, tokens)

    def mse(predictions):
        return float(((predictions - targets.double()) ** 2).mean())

    def cosine(predictions):
        change = predictions - base
        others = torch.ones(count, task.length, dtype=torch.bool)
        others[sequences, jstar] = False
        mean = change[others].view(count, task.length - 1, -1).mean(dim=1)
        return float(((mean * desired).sum(-1) / (mean.norm(dim=-1) * desired.norm(dim=-1))).mean())

    assert [(r["layer"], r["penalty"]) for r in rows] == [(1, 1.0), (2, 1.0)]
    for layer, row in enumerate(rows):
        assert row["loss"] == pytest.approx(mse(base), rel=1e-5)
        inflow = seen[layer]["attention"][:, 1:].mean(dim=1).amax(dim=-1).mean()
        assert row["inflow"] == pytest.approx(float(inflow), abs=1e-6)
        for kind in ("attention", "global"):
            expected = mse(toy_forward(model, tokens, layer, kind)[0]) - mse(base)
            assert abs(expected) > 1e-3 and row[f"dmse_remove_{kind}"] == pytest.approx(expected, abs=1e-5)
        value = (seen[layer]["value"][donor, 1 + jstar[donor]], 1 + jstar)
        expected = cosine(toy_forward(model, tokens, layer, "value", value)[0])
        assert abs(expected) > 0.1 and row["cosine_via_sink"] == pytest.approx(expected, abs=1e-4)
        expected = cosine(toy_forward(model, tokens, layer, "state", seen[layer]["state"][donor])[0])
        assert abs(expected) > 0.1 and row["cosine_via_g"] == pytest.approx(expected, abs=1e-4)


def test_transfer_cosine_on_a_planted_change():
    change = torch.zeros(3, 3, 3)
    # Recipients 0 and 2 of sequence 0 move by (1, 0, 0) and (3, 0, 0): their mean is (2, 0, 0).
    change[0, :, 0] = torch.tensor([1.0, 0.0, 3.0])
    change[0, 1, 2] = 100.0  # j* = 1 moves far, but it is not a recipient
    change[1, 1:, 1] = torch.tensor([1.0, -1.0])  # the recipients' mean change is 0: left out
    change[2, 1, 2] = 5.0  # nothing is desired: left out
    jstar = torch.tensor([1, 0, 0])
    desired = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert transfer_cosine(change, jstar, desired).tolist() == pytest.approx([2 / (2 * math.sqrt(2))])


def test_the_arms_table_puts_the_mean_over_seeds_beside_the_paper():
    rows = []
    for seed, (loss, cosine_g) in enumerate([(0.1, 0.5), (0.2, None)]):
        for layer in (1, 2):
            rows.append(
                {"name": f"arm-{seed}", "task": "broadcast", "variant": "gp", "penalty": 1.0, "seed": seed}
                | {"layer": layer, "loss": loss}
                | {"inflow": 0.25 * layer + seed, "dmse_remove_attention": 0.01, "dmse_remove_global": 2.0 + seed}
                | {"cosine_via_sink": 0.1 - 0.4 * seed, "cosine_via_g": cosine_g}
            )
    rows.append(rows[0] | {"variant": "reg", "penalty": 0.0})  # not an arm
    rows.append(rows[0] | {"penalty": 0.0, "task": "nop"})  # not an arm either
    rows.append(rows[0] | {"name": "one-layer", "seed": 7})  # a penalised gp model of another depth: not the arm
    lines = arms_table(rows).splitlines()
    assert lines[0] == (
        "| arm | source | task MSE | inflow L1 | inflow L2 | L2 dMSE remove attention | L2 dMSE remove global | "
        "L2 cosine via sink | L2 cosine via g |"
    )
    assert lines[2:] == [
        "| + global + penalty | seed 0 | 0.1 | 0.25 | 0.5 | 0.01 | 2 | 0.1 | 0.5 |",
        "| + global + penalty | seed 1 | 0.2 | 1.25 | 1.5 | 0.01 | 3 | -0.3 | - |",
        "| + global + penalty | mean of 2 | 0.15 | 0.75 | 1 | 0.01 | 2.5 | -0.1 | - |",
        "| + global + penalty | paper (5 seeds) | 0.144 | 0.062 | 0.057 | 0.004 | 1.64 | -0.035 | 0.892 |",
    ]
    assert arms_table(rows[-3:]) == ""


def test_the_penalty_recipe_is_the_gp_recipe_with_the_papers_lambda():
    spec = importlib.util.spec_from_file_location("train_run", ROOT / "train" / "run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    recipes = ROOT / "train" / "recipes"
    model, data, penalised = script.parse(["--config", str(recipes / "broadcast-gp-penalty.yaml")])
    assert (model.variant, data.dataset, penalised.common_mode_penalty) == ("gp", "broadcast", 1.0)
    gp = script.parse(["--config", str(recipes / "broadcast-gp.yaml")])
    assert (model, data, replace(penalised, common_mode_penalty=0.0, output_dir=gp[2].output_dir)) == gp
