import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file
from test_data import make_folder

from sink_models.data import Canvas, parse_options
from sink_models.modeling_sink_vit import SinkViTForImageClassification
from sink_models.presets import preset_config
from sink_models.training import (
    CommonModePenalty,
    DataArguments,
    ModelArguments,
    TrainArguments,
    paired_initialization,
    train,
)

ROOT = Path(__file__).parents[1]
SMALL = json.dumps(
    {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "drop_path_rate": 0.1,
    }
)


def arguments(output_dir, **train_fields):
    fields = {
        "output_dir": str(output_dir), "max_steps": 12, "per_device_batch_size": 32, "warmup_steps": 3,
        "logging_steps": 2, "learning_rate": 3e-3, **train_fields,
    }  # fmt: skip
    return (
        ModelArguments(variant="gated-reg", model_overrides=SMALL),
        DataArguments(crop_scale_min=0.5),
        TrainArguments(**fields),
    )


class Interrupted(Exception):
    pass


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    # 12 steps of 32 images: not a whole epoch (44 batches), so the resume lands mid-epoch.
    train(*arguments(tmp_path / "straight"))

    def stop(step, metrics):
        if step == 7:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(*arguments(tmp_path / "resumed", save_steps=5), on_step=stop)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step_5"]
    summary = train(*arguments(tmp_path / "resumed", save_steps=5, resume_from_checkpoint="auto"))
    assert summary["steps"] == 12
    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0, msg=name)


def test_loader_workers_give_the_images_of_the_main_process_and_resume_exactly(tmp_path):
    # Two workers decode and augment (random crops and flips): the run equals one without workers, and an
    # interrupted run resumed mid-epoch with workers equals both.
    model_args, _, _ = arguments(tmp_path)
    data_args = DataArguments(crop_scale_min=0.5, augment=True)
    # One torch thread in both: the automatic count falls with the workers, and float sums change with it.
    train(model_args, data_args, arguments(tmp_path / "main", dataloader_num_workers=0, torch_threads=1)[2])

    def stop(step, metrics):
        if step == 7:
            raise Interrupted

    fields = {"dataloader_num_workers": 2, "save_steps": 5, "torch_threads": 1}
    with pytest.raises(Interrupted):
        train(model_args, data_args, arguments(tmp_path / "workers", **fields)[2], on_step=stop)
    resumed = arguments(tmp_path / "workers", resume_from_checkpoint="auto", **fields)[2]
    summary = train(model_args, data_args, resumed)
    assert summary["steps"] == 12
    a = load_file(tmp_path / "main" / "model" / "model.safetensors")
    b = load_file(tmp_path / "workers" / "model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_loader_options():
    from sink_models.data import default_workers, loader_options

    assert loader_options(0, 2, persistent=True) == {"num_workers": 0, "pin_memory": torch.cuda.is_available()}
    assert loader_options(3, 4, persistent=False) == {
        "num_workers": 3, "pin_memory": torch.cuda.is_available(), "persistent_workers": False, "prefetch_factor": 4
    }  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    assert default_workers() == (0 if cores <= 2 else min(8, cores - 1))
    with pytest.raises(ValueError, match="dataloader_num_workers: got -1; allowed: None"):
        train(*arguments("unused", dataloader_num_workers=-1))
    with pytest.raises(ValueError, match="dataloader_prefetch_factor: got 0; allowed: an int >= 1"):
        train(*arguments("unused", dataloader_prefetch_factor=0))


def test_resume_with_gradient_accumulation_in_a_later_epoch(tmp_path):
    # 11 batches of 128 per epoch, 2 per step: 6 steps an epoch (the last one a single batch); resume in epoch 2.
    fields = {"per_device_batch_size": 128, "gradient_accumulation_steps": 2, "max_steps": 14, "logging_steps": 1}
    straight = train(*arguments(tmp_path / "straight", **fields))

    def stop(step, metrics):
        if step == 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(*arguments(tmp_path / "resumed", save_steps=8, **fields), on_step=stop)
    resumed = train(*arguments(tmp_path / "resumed", save_steps=8, resume_from_checkpoint="auto", **fields))
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)
    # The whole run's log and stability figures, not only the part after the resume.
    assert resumed["stability"] == pytest.approx(straight["stability"], rel=1e-5)
    logs = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("straight", "resumed")]
    steps = [[json.loads(line)["step"] for line in log] for log in logs]
    assert steps[0] == steps[1] == list(range(1, 15))


def test_saved_run_folder_loads_with_trust_remote_code(tmp_path):
    from transformers import AutoModelForImageClassification

    summary = train(*arguments(tmp_path, max_steps=3))
    folder = tmp_path / "model"
    assert {"config.json", "model.safetensors", "modeling_sink_vit.py", "preprocessor_config.json",
            "training_args.json"} <= {p.name for p in folder.iterdir()}  # fmt: skip
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    assert model.config.id2label[3] == "3" and model.config.attention_gate == "elementwise"
    assert json.loads((folder / "training_args.json").read_text())["model"]["variant"] == "gated-reg"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 3]
    assert {"loss", "lr", "grad_norm", "images_per_s", "max_activation"} <= set(lines[0])
    assert summary["evaluation"]["images"] == 359 and set(summary["stability"]) == {
        "loss_spikes", "largest_grad_norm", "largest_activation"}  # fmt: skip


def test_two_processes_train_in_sync(tmp_path):
    # An imagefolder with an unreadable image in each split: the ranks must stay in step all the same.
    images = tmp_path / "images"
    make_folder(images, corrupt=True)
    (images / "test" / "blue" / "broken.png").write_bytes(b"not an image")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
        "127.0.0.1", "--main_process_port", str(free_port()), str(ROOT / "train" / "run.py"),
        "--config", str(ROOT / "train" / "recipes" / "digits-toy-plain.yaml"), "--dataset", str(images),
        "--max_steps", "6", "--per_device_batch_size", "2", "--model_overrides", SMALL,
        "--output_dir", str(tmp_path / "run"), "--logging_steps", "2",
    ]  # fmt: skip
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["skipped_images"] >= 1
    assert summary["evaluation"]["images"] == 6  # the 6 readable test images, each counted once
    assert len(set(summary["parameter_checksums"])) == 1  # both ranks hold the same weights
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tmp_path / "run" / "model", trust_remote_code=True)
    assert sum(float(p.double().sum()) for p in model.parameters()) == pytest.approx(
        summary["parameter_checksums"][0], rel=1e-9
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dataset", "no-such-org/no-such-set"], "could not be loaded"),
        (["--variant", "gatedd"], "variant: got 'gatedd'; allowed: plain, gated"),
        (["--model_overrides", "{bad json"], "model_overrides: not a JSON object"),
        (["--model_overrides", '{"attention_gate": "x"}'], "attention_gate: got 'x'"),
        (["--config", "nope.yaml"], "no file 'nope.yaml'; recipes here: broadcast-"),
        (["--learning_rat", "0.1"], "unknown options"),
        (["--dataset", "canvas-digits", "--dataset_options", '{"size": 48}'], "set image_size to 48"),
        (["--dataset", "canvas-digits", "--dataset_options", '{"sise": 48}'], "dataset_options: unknown ['sise']"),
        (["--common_mode_penalty", "-1"], "common_mode_penalty: got -1.0; allowed: a weight >= 0 (0 = off)."),
        (["--model_overrides", '{"patch_size": 5}'], "patch_size"),
    ],
)
def test_bad_options_stop_before_training(tmp_path, options, message):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "run.py"), "--output_dir", str(tmp_path), *options],
        capture_output=True, text=True, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_unknown_recipe_keys_are_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("variant: plain\nlearnin_rate: 0.1\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "run.py"), "--config", str(recipe)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown recipe keys ['learnin_rate']; allowed:" in result.stderr


@pytest.mark.parametrize("recipe", sorted((ROOT / "train" / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_parses_and_a_canvas_model_sees_its_canvas(recipe):
    spec = importlib.util.spec_from_file_location("train_run", ROOT / "train" / "run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model_args, data_args, _ = script.parse(["--config", str(recipe)])
    if data_args.dataset == "canvas-digits":
        size = Canvas(**parse_options(data_args.dataset_options)).size
        assert json.loads(model_args.model_overrides)["image_size"] == size


class Planted(torch.nn.Module):
    """An attention module whose update is given: (update, None, None) like SinkViTAttention's output."""

    def __init__(self, update):
        super().__init__()
        self.update = update

    def forward(self, hidden_states):
        return self.update, None, None


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (torch.ones(2, 5, 3) * torch.tensor([1.0, -2.0, 3.0]), 1.0),  # every token gets the same update
        (torch.tensor([[[1.0, 2.0], [-1.0, -2.0]]]), 0.0),  # the updates cancel over the tokens
        (torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), (0.25 + 0.0) / 2 / ((1.0 + 0 + 0 + 0) / 4)),
    ],
)
def test_the_common_mode_penalty_is_the_papers_ratio(update, expected):
    blocks = [types.SimpleNamespace(attention=Planted(update)) for _ in range(2)]
    penalty = CommonModePenalty(blocks)
    for block in blocks:
        block.attention(None)
    assert float(penalty.take()) == pytest.approx(2 * expected, abs=1e-9)  # summed over the two layers
    assert penalty.terms == []


def test_the_penalty_of_a_model_is_computed_from_its_attention_updates_and_has_gradients():
    config = preset_config("gp", "toy", **json.loads(SMALL), num_labels=3)
    model = SinkViTForImageClassification(config)
    penalty = CommonModePenalty(model.sink_vit.layers)
    pixels = torch.randn(4, 3, 32, 32)
    outputs = model(pixel_values=pixels, output_hidden_states=True)
    total = penalty.take()
    penalty.remove()  # the recomputation below calls the attention modules again
    expected = 0.0
    with torch.no_grad():
        for layer, hidden in zip(model.sink_vit.layers, outputs.hidden_states, strict=False):
            update = layer.attention(layer.norm1(hidden))[0].double()  # without the global pathway's share
            expected += float((update.mean(dim=1) ** 2).mean() / (update**2).mean())
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    total.backward()
    assert model.sink_vit.layers[0].attention.q_proj.weight.grad.abs().sum() > 0
    model(pixel_values=pixels)
    assert penalty.terms == []


def test_a_penalised_run_logs_the_penalty_and_records_its_weight(tmp_path):
    model_args, data_args, args = arguments(tmp_path / "run", max_steps=4, common_mode_penalty=0.5)
    train(model_args, data_args, args)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert all(line["common_mode_penalty"] > 0 for line in lines)
    recorded = json.loads((tmp_path / "run" / "model" / "training_args.json").read_text())
    assert recorded["train"]["common_mode_penalty"] == 0.5


def test_variants_of_one_seed_start_from_the_plain_models_weights():
    fields = {**json.loads(SMALL), "num_labels": 3}

    def built(variant, seed):
        torch.manual_seed(123)  # the global RNG state before must not matter
        return paired_initialization(SinkViTForImageClassification(preset_config(variant, "toy", **fields)), seed)

    torch.manual_seed(7)
    plain = SinkViTForImageClassification(preset_config("plain", "toy", **fields)).state_dict()
    assert all(torch.equal(value, built("plain", 7).state_dict()[name]) for name, value in plain.items())
    for variant in ("gated-reg", "gp", "gated-headwise"):
        state = built(variant, 7).state_dict()
        assert all(torch.equal(value, state[name]) for name, value in plain.items()), variant
        assert len(state) > len(plain)
    other = built("gated-reg", 8).state_dict()
    assert not torch.equal(
        other["sink_vit.layers.0.attention.q_proj.weight"], plain["sink_vit.layers.0.attention.q_proj.weight"]
    )
