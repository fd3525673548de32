"""Resume reads only what the run wrote, as data: hostile pickles are refused unrun, a damaged latest checkpoint is
skipped for the newest one that verifies (exactly as if never interrupted), a named damaged one is refused."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import SMALL, arguments

from sink_models.errors import InputError
from sink_models.training import train
from sink_models.training.resume import CheckpointError, write_manifest

ROOT = Path(__file__).parents[1]
FIELDS = {"max_steps": 6, "save_steps": 3}
ALLOWED = "; allowed: a checkpoint this run wrote."


class Hostile:
    """Unpickled, it creates `marker`: what a planted checkpoint file could do with accelerate's load_state."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A six-step run with checkpoints at steps 3 and 6."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    train(*arguments(folder, **FIELDS))
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_3", "step_6"]
    return folder


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def resume(folder: Path, option: str = "auto") -> dict:
    return train(*arguments(folder, resume_from_checkpoint=option, **FIELDS))


def weights(folder: Path) -> dict:
    return load_file(folder / "model" / "model.safetensors")


def plant(path: Path, marker: Path) -> None:
    torch.save(Hostile(marker), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == ["io.open"]  # it would run open()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("optimizer.bin", "not readable as data only (UnpicklingError: Unsupported global: GLOBAL io.open was not "
                          "an allowed global by default)"),
        ("custom_checkpoint_0.pkl", "not readable as data only (UnpicklingError: Unsupported global: GLOBAL io.open "
                                    "was not an allowed global by default)"),
        ("custom_checkpoint_1.pkl", "not readable as data only (UnpicklingError: Unsupported global: GLOBAL io.open "
                                    "was not an allowed global by default)"),
        ("random_states_0.pkl", "not readable as data only (UnpicklingError: Unsupported global: GLOBAL io.open "
                                "was not an allowed global by default)"),
        ("model.safetensors", "not a readable safetensors file (SafetensorError: Error while deserializing header: "
                              "header too large)"),
    ],
)  # fmt: skip
def test_a_hostile_pickle_in_a_checkpoint_is_refused_unrun(run, tmp_path, name, problem):
    marker = tmp_path / "marker"
    step = run / "checkpoints" / "step_6"
    listed = json.loads((step / "manifest.json").read_text())["files"][name]["bytes"]
    plant(step / name, marker)
    # Its manifest catches the swap ...
    with pytest.raises(CheckpointError) as error:
        resume(run, str(step))
    replaced = f"{(step / name).stat().st_size} bytes, the manifest says {listed} (cut off or replaced)"
    assert str(error.value) == f"resume_from_checkpoint: {step / name}: {replaced}{ALLOWED}"
    # ... and with the manifest rewritten to match, loading as data only refuses it.
    write_manifest(step, 6, 1)
    with pytest.raises(CheckpointError) as error:
        resume(run, str(step))
    assert str(error.value) == f"resume_from_checkpoint: {step / name}: {problem}{ALLOWED}"
    assert not marker.exists()


def test_the_command_line_refuses_a_hostile_checkpoint_in_one_line_with_exit_2(run, tmp_path):
    marker = tmp_path / "marker"
    step = run / "checkpoints" / "step_6"
    plant(step / "random_states_0.pkl", marker)
    write_manifest(step, 6, 1)
    command = [sys.executable, str(ROOT / "train" / "run.py"), "--variant", "gated-reg", "--model_overrides", SMALL,
               "--crop_scale_min", "0.5", "--output_dir", str(run), "--resume_from_checkpoint", str(step),
               "--max_steps", "6", "--save_steps", "3", "--per_device_batch_size", "32"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: resume_from_checkpoint: {step / 'random_states_0.pkl'}: not readable as data only (UnpicklingError: "
        f"Unsupported global: GLOBAL io.open was not an allowed global by default){ALLOWED}"
    ]
    assert not marker.exists()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage_rng_with_its_manifest(step: Path) -> None:
    (step / "random_states_0.pkl").write_bytes(b"garbage")
    write_manifest(step, 6, 1)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda step: truncate(step / "model.safetensors"),
         "model.safetensors: {size} bytes, the manifest says {listed} (cut off or replaced)"),
        (lambda step: (step / "model.safetensors").write_bytes(b""),
         "model.safetensors: 0 bytes, the manifest says {listed} (cut off or replaced)"),
        (lambda step: (step / "optimizer.bin").unlink(), "optimizer.bin: missing"),
        (lambda step: flip_a_byte(step / "optimizer.bin"),
         "optimizer.bin: its sha256 differs from the manifest's (damaged or replaced)"),
        (lambda step: (step / "random_states_0.pkl").write_bytes(b"garbage"),
         "random_states_0.pkl: 7 bytes, the manifest says {listed} (cut off or replaced)"),
        (garbage_rng_with_its_manifest,
         "random_states_0.pkl: not readable as data only (UnpicklingError: Unsupported operand 103)"),
        (lambda step: (step / "manifest.json").unlink(),
         "manifest.json: missing (the checkpoint is incomplete or older than manifests)"),
        (lambda step: (step / "sampler.bin").write_bytes(b"x"), "sampler.bin: not in the checkpoint's manifest"),
    ],
    ids=["truncated-weights", "empty-weights", "no-optimizer", "flipped-optimizer-byte", "garbage-rng",
         "garbage-rng-listed", "no-manifest", "unlisted-file"],
)  # fmt: skip
def test_auto_resume_skips_a_damaged_latest_checkpoint_and_stays_exact(finished, run, caplog, damage, reason):
    step = run / "checkpoints" / "step_6"
    listed = {name: entry["bytes"] for name, entry in json.loads((step / "manifest.json").read_text())["files"].items()}
    damage(step)
    name = reason.split(":")[0]
    size = (step / name).stat().st_size if (step / name).exists() else None
    with caplog.at_level(logging.WARNING, logger="sink_models.training.resume"):
        summary = resume(run)
    expected = f"resume_from_checkpoint: skipped step_6: {step}/{reason.format(size=size, listed=listed.get(name))}"
    assert [record.getMessage() for record in caplog.records] == [expected]
    assert summary["steps"] == 6
    a, b = weights(finished), weights(run)  # resumed from step 3: the weights of the uninterrupted run
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [2, 4, 6]


def test_a_named_damaged_checkpoint_is_refused_in_one_line(run):
    step = run / "checkpoints" / "step_6"
    (step / "optimizer.bin").write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        resume(run, str(step))
    listed = json.loads((step / "manifest.json").read_text())["files"]["optimizer.bin"]["bytes"]
    assert str(error.value) == (
        f"resume_from_checkpoint: {step}/optimizer.bin: 0 bytes, the manifest says {listed} (cut off or replaced)"
        f"{ALLOWED}"
    )
    write_manifest(step, 6, 2)  # as if two processes had written it
    with pytest.raises(CheckpointError) as error:
        resume(run, str(step))
    assert str(error.value) == (
        f"resume_from_checkpoint: {step}/manifest.json: written by 2 processes; allowed: resume with as many "
        f"(this run has 1){ALLOWED}"
    )


def test_when_no_checkpoint_verifies_auto_refuses_instead_of_starting_over(run, caplog):
    for step in (3, 6):
        (run / "checkpoints" / f"step_{step}" / "manifest.json").unlink()
    log = (run / "metrics.jsonl").read_text()
    with pytest.raises(InputError) as error, caplog.at_level(logging.WARNING, logger="sink_models.training.resume"):
        resume(run)
    assert str(error.value) == (
        f"resume_from_checkpoint: none of the 2 checkpoints in {run / 'checkpoints'} verifies (each reason above); "
        "allowed: remove them, or train without resume_from_checkpoint."
    )
    assert [record.getMessage().split(":")[1] for record in caplog.records] == [" skipped step_6", " skipped step_3"]
    assert (run / "metrics.jsonl").read_text() == log  # nothing rewritten


def test_a_cut_off_last_log_line_is_dropped_and_a_damaged_one_inside_is_refused(run):
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + '\n{"step": 7, "lo')  # a run killed while writing its log
    assert resume(run)["steps"] == 6
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4, 6]
    log.write_text(f"{lines[0]}\nnot json\n{lines[2]}\n")
    with pytest.raises(InputError) as error:
        resume(run)
    assert str(error.value) == f"{log}: line 2 is no metrics record; allowed: one JSON object a line."


def test_two_processes_resume_exactly(tmp_path):
    """Under DDP the model is wrapped (`module.*`), its checkpoint is not: resume reads into the unwrapped model."""
    from conftest import free_port

    def launch(output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
            "127.0.0.1", "--main_process_port", str(free_port()), str(ROOT / "train" / "run.py"),
            "--config", str(ROOT / "train" / "recipes" / "digits-toy-plain.yaml"), "--max_steps", "6",
            "--save_steps", "2", "--per_device_batch_size", "8", "--model_overrides", SMALL,
            "--output_dir", str(output_dir), *extra,
        ]  # fmt: skip
        env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    launch(tmp_path / "run")
    straight = load_file(tmp_path / "run" / "model" / "model.safetensors")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4", "step_6"]  # save_total_limit: 2
    shutil.rmtree(checkpoints / "step_6")  # as if interrupted after step 4's checkpoint
    done = launch(tmp_path / "run", "--resume_from_checkpoint", "auto")
    assert f"resumed from {checkpoints / 'step_4'} (step 4)" in done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["processes"] == 2
    resumed = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0, msg=name)
