"""Checkpoints of a training run that resume exactly and safely: `save_state` writes accelerate's files and a
manifest of their sizes and sha256 last; `resume` reads only what the run wrote, as data (safetensors, JSON,
`torch.load(weights_only=True)`), checks every piece against the run before applying any, and with `auto` falls back
to the newest checkpoint that verifies. `TrainState` is the loop's own state saved with them."""

import hashlib
import json
import logging
import os
import random
import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate.utils import DistributedType, get_torch_accelerator_backend
from safetensors.torch import load_file

from ..errors import InputError, is_int

logger = logging.getLogger(__name__)


class TrainState:
    """The step counter and the run's stability figures, saved with every checkpoint (so a resumed run's summary
    covers the whole run)."""

    def __init__(self):
        self.step, self.spikes, self.largest_grad, self.largest_activation = 0, 0, 0.0, 0.0
        self.unreadable = 0  # training images that could not be decoded (every epoch's)
        self.recent_losses: list[float] = []

    def record(self, loss: float, grad_norm: float | None, activation: float) -> None:
        # A spike: a loss above twice the median of the last 50.
        self.spikes += len(self.recent_losses) >= 10 and loss > 2 * statistics.median(self.recent_losses)
        self.recent_losses = [*self.recent_losses, loss][-50:]
        self.largest_grad = max(self.largest_grad, grad_norm or 0.0)
        self.largest_activation = max(self.largest_activation, activation)

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def kept_log_lines(path: Path, step: int) -> list[str] | None:
    """The lines of metrics.jsonl a run resumed at `step` keeps (None without a log): the interrupted run's lines
    after its checkpoint go, since the resumed run logs those steps again, and so does a last line cut off by the
    interruption. Read on every process, so that a damaged log stops all of them alike."""
    if not path.exists():
        return None
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            logged = json.loads(line)["step"]
            if not is_int(logged):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            if number == len(lines):
                break
            raise InputError(f"{path}: line {number} is no metrics record; allowed: one JSON object a line.") from None
        if logged <= step:
            kept.append(line)
    return kept


# accelerator.save_state's files for this loop's model, optimizer and the two objects registered for checkpointing
# (the scheduler, then the TrainState); SCALER only with fp16; RNG states one per process.
WEIGHTS, OPTIMIZER, SCHEDULER, STATE, SCALER = (
    "model.safetensors", "optimizer.bin", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "scaler.pt"
)  # fmt: skip
MANIFEST = "manifest.json"
CHECKPOINT = re.compile(r"step_(\d+)")
# numpy's MT19937 state, a uint32 array, is the one non-tensor object in accelerate's RNG files: allowed, nothing else.
_NUMPY_RNG = [np.ndarray((0,)).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(InputError):
    """A checkpoint that cannot be verified against its manifest or read as data only; the message names the file."""


class Checkpoint(NamedTuple):
    """A checkpoint read and checked in full, before any of it is applied."""

    folder: Path
    weights: dict
    optimizer: dict
    scheduler: dict
    state: dict
    scaler: dict | None
    rng: dict  # this process's


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()} - {MANIFEST}


def write_manifest(folder: Path, step: int, processes: int) -> None:
    """manifest.json, written last into a checkpoint: the step, the process count and every file's size and sha256,
    so that a resume tells a complete checkpoint from a cut-off, damaged or altered one."""
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
             for name in sorted(_files(folder))}  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps({"step": step, "processes": processes, "files": files}, indent=1))


def verify_manifest(folder: Path) -> dict:
    """The checkpoint's manifest once every file matches it (the same files, sizes and sha256); a CheckpointError
    naming the first file that does not."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files, step, processes = manifest["files"], manifest["step"], manifest["processes"]
        if not (is_int(step) and is_int(processes) and isinstance(files, dict)):
            raise TypeError("step, processes or files of the wrong type")
        expected = {name: (entry["bytes"], entry["sha256"]) for name, entry in files.items()}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (the checkpoint is incomplete or older than manifests)") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise CheckpointError(f"{path}: unreadable ({type(error).__name__}: {str(error)[:200]})") from None
    present = _files(folder)
    unlisted = sorted(present - expected.keys())
    if unlisted:
        raise CheckpointError(f"{folder / unlisted[0]}: not in the checkpoint's manifest")
    for name, (size, sha256) in sorted(expected.items()):
        file = folder / name
        if name not in present:
            raise CheckpointError(f"{file}: missing")
        if file.stat().st_size != size:
            raise CheckpointError(
                f"{file}: {file.stat().st_size} bytes, the manifest says {size} (cut off or replaced)"
            )
        if _sha256(file) != sha256:
            raise CheckpointError(f"{file}: its sha256 differs from the manifest's (damaged or replaced)")
    return manifest


def _load_problem(error: Exception) -> str:
    """The reason in torch.load's message (its first lines tell how to unpickle anyway, which this loop never does)."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].split('. ')[0] if lines else 'empty or cut off'}"


def read_data(path: Path):
    """`path` loaded with torch.load(weights_only=True): tensors, plain containers and numbers, numpy's RNG state
    arrays; a CheckpointError naming the file for anything else (a pickle that would run code is refused unrun)."""
    try:
        with torch.serialization.safe_globals(_NUMPY_RNG):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any bytes at all may be here: each failure is a refusal, none a crash
        raise CheckpointError(f"{path}: not readable as data only ({_load_problem(error)})") from None


def _checked_weights(path: Path, model) -> dict:
    """The weights in `path` (safetensors) once they have exactly the model's names, shapes and dtypes."""
    try:
        weights = load_file(path)
    except Exception as error:  # a cut-off or foreign file: refused, whatever safetensors raises
        raise CheckpointError(f"{path}: not a readable safetensors file ({_load_problem(error)})") from None
    own = model.state_dict()
    if weights.keys() != own.keys():
        missing, extra = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
        raise CheckpointError(f"{path}: not this model's weights (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, value in own.items():
        if (weights[name].shape, weights[name].dtype) != (value.shape, value.dtype):
            got = (tuple(weights[name].shape), weights[name].dtype)
            raise CheckpointError(f"{path}: {name} is {got}, the model's {(tuple(value.shape), value.dtype)}")
    return weights


def _check_optimizer(state, optimizer, path: Path) -> None:
    """The optimizer state must hold this optimizer's groups and, per parameter, tensors of that parameter's shape."""
    own = optimizer.state_dict()
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    try:
        sizes = [len(group["params"]) for group in state["param_groups"]]
        if sizes != [len(group["params"]) for group in own["param_groups"]]:
            raise ValueError(f"parameter groups of {sizes} parameters, the optimizer's differ")
        for index, values in state["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != parameters[index].shape:
                    raise ValueError(f"{name} of parameter {index} has shape {tuple(value.shape)}")
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{path}: not this optimizer's state ({type(error).__name__}: {error})") from None


def _check_rng(states, path: Path) -> None:
    """Each random-number state must be one its generator takes (tried on scratch generators, not the live ones)."""
    try:
        if not is_int(states["step"]):
            raise TypeError("step is no int")
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
        device_type, _ = get_torch_accelerator_backend()
        if device_type is not None:
            device_states = states[f"torch_{device_type}_manual_seed"]
            for value in device_states if isinstance(device_states, list) else [device_states]:
                if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8):
                    raise TypeError(f"{device_type} state is no byte tensor")
    except Exception as error:  # whatever the states hold: refused rather than a resume that is not exact
        raise CheckpointError(f"{path}: not a random-number state ({_load_problem(error)})") from None


def read_checkpoint(folder: Path, accelerator, model, optimizer, scheduler) -> Checkpoint:
    """Everything a resume needs from `folder`, verified against its manifest and read as data only (safetensors,
    torch.load with weights_only=True) and checked against this run, before any of it is applied."""
    manifest = verify_manifest(folder)
    if manifest["processes"] != accelerator.num_processes:
        raise CheckpointError(
            f"{folder / MANIFEST}: written by {manifest['processes']} processes; allowed: resume with as many "
            f"(this run has {accelerator.num_processes})"
        )
    weights = _checked_weights(folder / WEIGHTS, accelerator.unwrap_model(model))  # DDP wraps: module.*
    optimizer_state = read_data(folder / OPTIMIZER)
    _check_optimizer(optimizer_state, optimizer, folder / OPTIMIZER)
    scheduler_state = read_data(folder / SCHEDULER)
    if not isinstance(scheduler_state, dict) or scheduler_state.keys() != scheduler.state_dict().keys():
        raise CheckpointError(f"{folder / SCHEDULER}: not this learning-rate schedule's state")
    state = read_data(folder / STATE)
    fresh = TrainState().state_dict()
    if not isinstance(state, dict) or state.keys() != fresh.keys() or state["step"] != manifest["step"]:
        raise CheckpointError(f"{folder / STATE}: not the training state of step {manifest['step']}")
    scaler = None if accelerator.scaler is None else read_data(folder / SCALER)
    rngs = []
    for index in range(manifest["processes"]):  # every process checks them all, so all take the same checkpoint
        path = folder / f"random_states_{index}.pkl"
        rngs.append(read_data(path))
        _check_rng(rngs[-1], path)
    rng = rngs[accelerator.process_index]
    return Checkpoint(folder, weights, optimizer_state, scheduler_state, state, scaler, rng)


def _apply(checkpoint: Checkpoint, accelerator, model, optimizer, scheduler, state: TrainState) -> None:
    """Put a checked checkpoint into the run, as accelerator.load_state would have (the RNG states last)."""
    accelerator.unwrap_model(model).load_state_dict(checkpoint.weights)  # saved unwrapped, as save_state does
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    state.load_state_dict(checkpoint.state)
    if checkpoint.scaler is not None:
        accelerator.scaler.load_state_dict(checkpoint.scaler)
    rng = checkpoint.rng
    random.setstate(rng["random_state"])
    np.random.set_state(rng["numpy_random_seed"])
    torch.set_rng_state(rng["torch_manual_seed"])
    device_type, device_module = get_torch_accelerator_backend()
    if device_type is not None:
        module = torch.get_device_module(device_type)
        device_states = rng[f"torch_{device_type}_manual_seed"]
        if isinstance(device_states, list):
            module.set_rng_state_all(device_states)
        else:
            module.set_rng_state(device_states)
    accelerator.step = rng["step"]  # where gradient accumulation is in its cycle


def resume(option: str | None, checkpoints: Path, accelerator, model, optimizer, scheduler, state) -> Path | None:
    """Load the checkpoint `option` names (a folder, or `auto`: the newest under `checkpoints` that verifies; each
    one skipped is logged with its reason) into the run; the folder, or None when there is nothing to resume."""
    if not option:
        return None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise InputError(
            f"resume_from_checkpoint: a {accelerator.distributed_type.value} checkpoint can only be read by unpickling"
            " (its sharded format); allowed: resuming runs on one device or with DDP."
        )
    arguments = (accelerator, model, optimizer, scheduler)
    if option != "auto":
        folder = Path(option)
        if not folder.is_dir():
            raise InputError(
                f"resume_from_checkpoint: {option!r} is not a checkpoint folder; allowed: 'auto' or a folder."
            )
        try:
            checkpoint = read_checkpoint(folder, *arguments)
        except CheckpointError as error:
            raise CheckpointError(f"resume_from_checkpoint: {error}; allowed: a checkpoint this run wrote.") from None
    else:
        found = sorted(
            (path for path in checkpoints.glob("step_*") if CHECKPOINT.fullmatch(path.name) and path.is_dir()),
            key=lambda path: int(path.name.split("_")[1]),
            reverse=True,
        )
        checkpoint = None
        for folder in found:
            try:
                checkpoint = read_checkpoint(folder, *arguments)
                break
            except CheckpointError as error:
                if accelerator.is_main_process:
                    logger.warning(f"resume_from_checkpoint: skipped {folder.name}: {error}")
        if checkpoint is None:
            if found:
                raise InputError(
                    f"resume_from_checkpoint: none of the {len(found)} checkpoints in {checkpoints} verifies (each "
                    "reason above); allowed: remove them, or train without resume_from_checkpoint."
                )
            return None
    _apply(checkpoint, *arguments, state)
    if accelerator.is_main_process:
        print(f"resumed from {checkpoint.folder} (step {state.step})", file=sys.stderr)
    return checkpoint.folder


def save_state(accelerator, checkpoints: Path, step: int, keep: int) -> None:
    """accelerator.save_state into a temporary folder renamed into place, its manifest written last: a killed run
    leaves no half checkpoint, and a checkpoint damaged later fails verification."""
    final, staging = checkpoints / f"step_{step}", checkpoints / f".staging_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()  # every process's RNG file is in place
    if accelerator.is_main_process:
        write_manifest(staging, step, accelerator.num_processes)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        found = sorted(
            (path for path in checkpoints.glob("step_*") if CHECKPOINT.fullmatch(path.name)),
            key=lambda path: int(path.name.split("_")[1]),
        )
        for old in found[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
