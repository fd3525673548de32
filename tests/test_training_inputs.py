"""Bad input to train/run.py: one line on stderr naming the field and what is allowed, exit code 2, no files."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_training import SMALL, arguments

from sink_models.configuration_sink_vit import SinkViTConfig
from sink_models.errors import InputError
from sink_models.training import train

ROOT = Path(__file__).parents[1]
CANVAS = str(ROOT / "train" / "recipes" / "canvas-plain.yaml")
OWN_FIELDS = ", ".join(SinkViTConfig.__annotations__)


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_run", ROOT / "train" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refusal(script, capsys, argv: list[str]) -> str:
    """The one line train/run.py prints for `argv`, after checking it exits 2."""
    assert script.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("learning_rate: [0.1, 0.2]\n", "learning_rate: got [0.1, 0.2]; allowed: a number > 0."),
        ("gradient_accumulation_steps: 0\n", "gradient_accumulation_steps: got 0; allowed: an int >= 1."),
        ("max_steps: 2.5\n", "max_steps: got 2.5; allowed: an int >= 0 (0: num_epochs over the training split)."),
        ("save_steps: -1\n", "save_steps: got -1; allowed: an int >= 0 (0: no checkpoints)."),
        ("warmup_steps: -5\n", "warmup_steps: got -5; allowed: an int >= 0."),
        ("augment: 3\n", "augment: got 3; allowed: true or false."),
        ("seed: -1\n", "seed: got -1; allowed: an int in [0, 2**32)."),
        ("mixed_precision: fp8\n", "mixed_precision: got 'fp8'; allowed: no, fp16 or bf16."),
        ("num_epochs: .nan\n", "num_epochs: got nan; allowed: a number > 0."),
        (
            "model_overrides: {num_register_token: 0}\n",
            "model_overrides: 'num_register_token' is no SinkViTConfig field; Did you mean 'num_register_tokens'? "
            f"allowed: {OWN_FIELDS} (or a PreTrainedConfig field).",
        ),
    ],
)
def test_a_bad_recipe_value_is_refused_in_one_line(script, capsys, tmp_path, recipe, message):
    path = tmp_path / "r.yaml"
    path.write_text("variant: plain\n" + recipe)
    out = tmp_path / "run"
    assert refusal(script, capsys, ["--config", str(path), "--output_dir", str(out)]) == f"error: {message}"
    assert not out.exists()


def test_unparseable_or_non_mapping_yaml_is_refused_in_one_line(script, capsys, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("variant: plain\nmax_steps: [1,\n")
    with pytest.raises(yaml.YAMLError) as parsed:  # PyYAML's own words for the problem
        yaml.safe_load(path.read_text())
    line = refusal(script, capsys, ["--config", str(path)])
    assert line == (
        f"error: --config: {path} is not YAML ({parsed.value.problem} at line 3, column 1); "
        "allowed: lines of 'key: value'."
    )
    path.write_text("- variant\n- plain\n")
    line = refusal(script, capsys, ["--config", str(path)])
    assert line == f"error: --config: {path} holds a list; allowed: lines of 'key: value'."


def test_an_output_dir_that_is_a_file_is_refused(script, capsys, tmp_path):
    file = tmp_path / "taken"
    file.write_text("someone's notes")
    line = refusal(script, capsys, ["--output_dir", str(file)])
    assert line == f"error: output_dir: {str(file)!r} is a file; allowed: a folder (new or existing)."
    inside = file / "run"
    line = refusal(script, capsys, ["--output_dir", str(inside)])
    assert (
        line
        == f"error: output_dir: {str(inside)!r} is inside {str(file)!r}, a file; allowed: a folder (new or existing)."
    )
    assert file.read_text() == "someone's notes"


def test_negative_steps_on_the_canvas_and_no_steps_on_a_task_say_what_fits(script, capsys, tmp_path):
    line = refusal(script, capsys, ["--config", CANVAS, "--max_steps", "-5", "--output_dir", str(tmp_path / "a")])
    assert line == "error: max_steps: got -5; allowed: an int >= 0 (0: num_epochs over the training split)."
    argv = ["--dataset", "nop", "--max_steps", "0", "--model_overrides", "{}", "--output_dir", str(tmp_path / "b")]
    line = refusal(script, capsys, argv)
    assert line == "error: max_steps: got 0; allowed: an int > 0 (the task 'nop' has no epochs)."


def test_library_validation_errors_become_training_errors(tmp_path):
    # A config's own ValueError (raised in configuration_sink_vit) reaches the caller as bad input.
    model_args, data_args, args = arguments(tmp_path, max_steps=1)
    model_args.model_overrides = '{"attention_gate": "x"}'
    with pytest.raises(InputError, match=r"^attention_gate: got 'x'; allowed: one of \('none'"):
        train(model_args, data_args, args)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_command_line_exits_2_on_bad_input(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "run.py"), "--warmup_steps", "-5", "--model_overrides", SMALL,
         "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: warmup_steps: got -5; allowed: an int >= 0."]
    assert not (tmp_path / "run").exists()
