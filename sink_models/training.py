"""The training loop on accelerate, used by train/run.py: any variant on image data or a synthetic sink task."""

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import math
import os
import sys
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import gather_object, set_seed
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .checkpoint import default_image_processor, save_checkpoint
from .configuration_sink_vit import SinkViTConfig, as_pair
from .data import (
    CANVAS,
    IGNORED,
    Augmentation,
    Canvas,
    Collate,
    ImageData,
    Indexed,
    StreamedRows,
    default_workers,
    load_image_data,
    loader_options,
    parse_options,
)
from .errors import InputError, is_int, json_object
from .modeling_sink_vit import SinkViTForImageClassification
from .presets import VARIANTS, check_variant, preset_config
from .resume import TrainState, kept_log_lines, resume, save_state
from .tasks import TASKS, SinkTask, TokenRegressor

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    variant: str = field(default="plain", metadata={"help": f"one of {', '.join(VARIANTS)}"})
    size: str = field(default="toy", metadata={"help": "toy, tiny, small, base or large (image data only)"})
    model_overrides: str = field(default="{}", metadata={"help": "JSON object of any SinkViTConfig fields"})


@dataclass
class DataArguments:
    dataset: str = field(
        default="digits", metadata={"help": "digits, canvas-digits, nop, broadcast, an imagefolder dir or Hub id"}
    )
    dataset_options: str = field(
        default="{}", metadata={"help": "JSON object; canvas-digits: size, digit_size, noise, distractors, ..."}
    )
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    eval_split: str = "test"
    augment: bool = field(default=True, metadata={"help": "random resized crop (and flip) while training"})
    crop_scale_min: float = 0.8
    flip: bool = True
    streaming: bool = field(default=False, metadata={"help": "stream the dataset (Hub id or a folder of shards)"})
    shuffle_buffer: int = field(default=10_000, metadata={"help": "streaming: rows in the shuffle buffer"})
    streaming_eval_images: int = field(default=1_000, metadata={"help": "streaming: held-out images per process"})
    task_dim: int = 32
    task_length: int = 16
    task_eval_batches: int = 8


@dataclass
class TrainArguments:
    output_dir: str = "runs/run"
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0: num_epochs over the training split"})
    num_epochs: float = 1.0
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16"})
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps with accelerator.save_state"})
    save_total_limit: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "auto, or a checkpoint folder"})
    report_to: str = field(default="none", metadata={"help": "none or an accelerate tracker, e.g. tensorboard"})
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={"help": "processes that decode and augment images; default: from the machine's cores (0 on two)"},
    )
    dataloader_prefetch_factor: int = field(default=2, metadata={"help": "batches each worker prepares ahead"})
    torch_compile: bool = field(default=False, metadata={"help": "train the torch.compile'd model (fullgraph)"})
    torch_compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend, e.g. eager"})
    torch_threads: int | None = field(
        default=None,
        metadata={"help": "torch threads per process; default: OMP_NUM_THREADS if set, else from the cores (see "
                  "training.torch_threads)"},
    )  # fmt: skip
    common_mode_penalty: float = field(
        default=0.0, metadata={"help": "lambda of the paper's Eq. 5 penalty on each layer's common attention update"}
    )


@contextlib.contextmanager
def _input_errors():
    """Inside: the ValueErrors of the library's own validation (configs, data, options) are bad input, raised again
    as InputError; any other exception stays what it is."""
    try:
        yield
    except InputError:
        raise
    except ValueError as error:
        lines = str(error).strip().splitlines()
        raise InputError(lines[0] if lines else type(error).__name__) from error


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Each argument with a range: (test, what is allowed). Every other field is checked against its annotation.
_RANGES = {
    "max_steps": (lambda v: is_int(v) and v >= 0, "an int >= 0 (0: num_epochs over the training split)"),
    "save_steps": (lambda v: is_int(v) and v >= 0, "an int >= 0 (0: no checkpoints)"),
    "warmup_steps": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
    "logging_steps": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "per_device_batch_size": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "gradient_accumulation_steps": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "save_total_limit": (is_int, "an int (0 or less: keep every checkpoint)"),
    "seed": (lambda v: is_int(v) and 0 <= v < 2**32, "an int in [0, 2**32)"),
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "max_grad_norm": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "num_epochs": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "common_mode_penalty": (lambda v: _is_number(v) and v >= 0, "a weight >= 0 (0 = off)"),
    "mixed_precision": (lambda v: v in ("no", "fp16", "bf16"), "no, fp16 or bf16"),
    "crop_scale_min": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "shuffle_buffer": (lambda v: is_int(v) and v >= 0, "an int >= 0 (0: no shuffling)"),
    "streaming_eval_images": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "task_dim": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "task_length": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "task_eval_batches": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    "torch_threads": (lambda v: v is None or (is_int(v) and v >= 1), "null (chosen from the cores) or an int >= 1"),
    # JSON text (command lines, recipes) or a dict; json_object says what is wrong inside.
    "model_overrides": (lambda v: isinstance(v, (str, dict)), "a JSON object"),
    "dataset_options": (lambda v: isinstance(v, (str, dict)), "a JSON object"),
}
# Annotation -> (test, what is allowed), for the fields without a range.
_TYPES = {
    str: (lambda v: isinstance(v, str), "a string"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    str | None: (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def check_arguments(*groups) -> None:
    """An InputError naming the first argument of these ModelArguments / DataArguments / TrainArguments whose
    value has the wrong type or is out of range, and what is allowed; recipes can put any YAML value anywhere."""
    for group in groups:
        # The class's annotations, not dataclasses.fields(): HfArgumentParser rewrites `str | None` there to `str`.
        for name, annotation in typing.get_type_hints(type(group)).items():
            value = getattr(group, name)
            rule = _RANGES.get(name) or _TYPES.get(annotation)
            if rule is not None and not rule[0](value):
                raise InputError(f"{name}: got {value!r}; allowed: {rule[1]}.")


def _check_output_dir(output_dir: str) -> None:
    """The run's folder, or the nearest of its parents that exists, must be a folder (not a file)."""
    path = Path(output_dir)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                what = "is a file" if existing == path else f"is inside {str(existing)!r}, a file"
                raise InputError(f"output_dir: {output_dir!r} {what}; allowed: a folder (new or existing).")
            return


class CommonModePenalty:
    """The paper's Eq. 5, summed over layers: E(mean_i o_i) / (E(O) + 1e-12) per layer, with O the attention
    update after o_proj (before the residual) and E the mean squared entry over the batch. Penalising the part
    of the update that every token shares leaves broadcasting to the global pathway."""

    def __init__(self, blocks):
        self.terms: list[torch.Tensor] = []
        self.handles = [block.attention.register_forward_hook(self._hook) for block in blocks]

    def _hook(self, module, args, output):
        update = output[0].float()
        common = update.mean(dim=1).pow(2).mean()
        self.terms.append(common / (update.pow(2).mean() + 1e-12))

    def take(self) -> torch.Tensor:
        terms, self.terms = self.terms, []
        return torch.stack(terms).sum()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ActivationMonitor:
    """The largest |activation| leaving any block since the last `take()` (forward hooks on the blocks)."""

    def __init__(self, blocks):
        self.largest = None
        self.handles = [block.register_forward_hook(self._hook) for block in blocks]

    def _hook(self, module, args, output):
        tokens = output[0] if isinstance(output, tuple) else output
        peak = tokens.detach().abs().amax()
        # Stays on the device: one host sync per step (in take), not one per block.
        self.largest = peak if self.largest is None else torch.maximum(self.largest, peak)

    def take(self) -> float:
        largest, self.largest = self.largest, None
        return 0.0 if largest is None else float(largest)


def torch_threads(cores: int, processes: int, loader_workers: int) -> int:
    """Torch threads for each of `processes` training processes on a machine with `cores` usable cores, each process
    with `loader_workers` loader workers: processes x (threads + workers) fit in the cores less one, at least 1.

    A worker decodes and augments on a core of its own (torch gives it one thread). The core left over is for the
    rest of the machine: with every core taken, any competing process stalls all of torch's threads at each barrier
    (on 2 busy cores, toy training ran at 46 images/s with 2 threads and 234 with 1).
    """
    return max(1, (cores - 1) // processes - loader_workers)


def _set_torch_threads(args: TrainArguments, data_args: DataArguments, accelerator: Accelerator) -> dict:
    """Set this process's torch threads: --torch_threads, else OMP_NUM_THREADS as torch read it, else
    torch_threads() for this machine; how many and why, for the summary."""
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
        return {"threads": args.torch_threads, "from": "torch_threads"}
    if os.environ.get("OMP_NUM_THREADS"):  # the user's, or accelerate launch's for several processes
        return {"threads": torch.get_num_threads(), "from": "OMP_NUM_THREADS"}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))  # on this machine
    workers = 0
    if data_args.dataset not in TASKS:
        workers = default_workers() if args.dataloader_num_workers is None else args.dataloader_num_workers
    threads = torch_threads(cores, processes, workers)
    torch.set_num_threads(threads)
    return {"threads": threads, "from": "cores", "cores": cores, "processes": processes, "loader_workers": workers}


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, on_step=None) -> dict:
    """Train, checkpoint, evaluate and save; returns the run summary (also written to output_dir/summary.json).

    `on_step(step, metrics)` is called after every optimizer step on every process (tests interrupt runs with it).
    The torch thread count it sets (see torch_threads) is put back on return.
    """
    threads = torch.get_num_threads()
    try:
        return _train(model_args, data_args, args, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, on_step) -> dict:
    overrides = _checked_inputs(model_args, data_args, args)
    if data_args.streaming and data_args.dataset in TASKS:
        raise InputError(f"streaming: {data_args.dataset!r} is generated, not read; allowed: an image dataset.")
    output_dir = Path(args.output_dir)
    trackers = None if args.report_to == "none" else args.report_to
    with _input_errors():  # e.g. fp16 without a GPU, an unknown tracker
        accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=trackers,
            project_dir=str(output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
    threads = _set_torch_threads(args, data_args, accelerator)  # before the model is built
    set_seed(args.seed)
    with _input_errors():  # the config's fields, the dataset, its options
        task, model, data, collate, loader, eval_loader, processor = _model_and_data(
            model_args, data_args, args, overrides, accelerator
        )
    blocks = model.sink_vit.layers

    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate)
    prepared = _prepared(accelerator, model, optimizer, loader, eval_loader, task, data, data_args, args)
    model, optimizer, loader, eval_loader, steps_per_epoch = prepared
    # The loop runs the compiled model; saving, loading and evaluation use the prepared one it wraps.
    forward = torch.compile(model, backend=args.torch_compile_backend) if args.torch_compile else model
    if task is not None and not args.max_steps:
        raise InputError(f"max_steps: got 0; allowed: an int > 0 (the task {data_args.dataset!r} has no epochs).")
    total_steps = args.max_steps or math.ceil(args.num_epochs * steps_per_epoch)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, total_steps), total_steps)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    checkpoints = output_dir / "checkpoints"
    # Not accelerator.load_state: it unpickles (weights_only=False) what it finds in the folder.
    if resume(args.resume_from_checkpoint, checkpoints, accelerator, model, optimizer, scheduler, state) is not None:
        kept = kept_log_lines(output_dir / "metrics.jsonl", state.step)
        if kept is not None and accelerator.is_main_process:
            (output_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    if trackers:
        accelerator.init_trackers("sink-models", config=_flat_config(model_args, data_args, args))

    monitor = ActivationMonitor(blocks)
    penalty = CommonModePenalty(blocks) if args.common_mode_penalty else None
    log_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_local_main_process:  # said once the input is known to be good: bad input gets one line
        why = {"torch_threads": "--torch_threads", "OMP_NUM_THREADS": "OMP_NUM_THREADS"}.get(threads["from"])
        if why is None:
            why = (f"{threads['cores']} cores less one, {threads['processes']} process(es), "
                   f"{threads['loader_workers']} loader workers each")  # fmt: skip
        print(f"torch threads: {threads['threads']} per process ({why})", file=sys.stderr)
    progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_local_main_process)
    started, images_since, window, penalties = time.perf_counter(), 0, [], []
    while state.step < total_steps:
        batches = _streamed_batches if data_args.streaming else _batches
        for batch in batches(task, loader, state.step, steps_per_epoch, args, accelerator, collate):
            # Unreadable images (labelled IGNORED by the collate, in a worker or here): one device sync a batch.
            unreadable = 0 if task is not None else int((batch["labels"] == IGNORED).sum())
            state.unreadable += unreadable
            with accelerator.accumulate(model):
                outputs = forward(**batch)
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs.loss
                if task is None and unreadable == len(batch["labels"]):
                    loss = outputs.logits.sum() * 0.0  # every image unreadable: same calls as the other ranks
                objective = loss
                if penalty is not None:
                    common = penalty.take()
                    objective = loss + args.common_mode_penalty * common
                    penalties.append(common.detach())
                accelerator.backward(objective)
                grad_norm = None
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    grad_norm = None if norm is None else float(norm)  # DeepSpeed clips by itself
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window.append(loss.detach())
            images_since += len(batch["pixel_values"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            step_loss = float(accelerator.reduce(torch.stack(window).mean(), "mean"))  # the whole accumulation
            window = []
            activation = monitor.take()
            state.record(step_loss, grad_norm, activation)
            metrics = {"step": state.step, "loss": step_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm}
            if penalties:  # the task loss stays "loss": the penalty is logged beside it, unweighted
                metrics["common_mode_penalty"] = float(accelerator.reduce(torch.stack(penalties).mean(), "mean"))
                penalties = []
            if state.step % args.logging_steps == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - started
                metrics |= {"images_per_s": images_since / elapsed, "max_activation": activation}
                started, images_since = time.perf_counter(), 0
                if accelerator.is_main_process:
                    with open(log_path, "a") as log:
                        log.write(json.dumps(metrics) + "\n")
                if trackers:
                    accelerator.log(metrics, step=state.step)
                progress.set_postfix(loss=f"{step_loss:.4f}")
            progress.update(1)
            if args.save_steps and state.step % args.save_steps == 0:
                save_state(accelerator, checkpoints, state.step, args.save_total_limit)
            if on_step is not None:
                on_step(state.step, metrics)
            if state.step >= total_steps:
                break
    progress.close()
    if penalty is not None:
        penalty.remove()

    evaluation = _evaluate(accelerator, model, task, eval_loader, data_args, args)
    summary = _summary(accelerator, model, state, evaluation, collate) | {"torch_threads": threads}
    _finish(accelerator, model, summary, task, processor, (model_args, data_args, args))
    return summary


def _model_and_data(model_args, data_args, args, overrides: dict, accelerator) -> tuple:
    """(task or None, model, image data, collate, loader, held-out loader, processor); None where a task has none."""
    if data_args.dataset not in TASKS:
        return None, *_image_run(model_args, data_args, args, overrides, accelerator)
    task = SinkTask(data_args.dataset, dim=data_args.task_dim, length=data_args.task_length, seed=args.seed)
    config = task.model_config(**VARIANTS[model_args.variant], **overrides)
    model = TokenRegressor(config, learn_positions=task.kind == "broadcast")  # as in the paper's two toys
    return task, model, None, None, None, None, None


def _prepared(accelerator, model, optimizer, loader, eval_loader, task, data, data_args, args) -> tuple:
    """(model, optimizer, loader, eval_loader, optimizer steps an epoch or None) after accelerator.prepare."""
    if data_args.streaming or task is not None:
        # A stream: each process reads its own shards, so accelerate must neither dispatch nor re-split it.
        model, optimizer = accelerator.prepare(model, optimizer)
        return model, optimizer, loader, eval_loader, None
    model, optimizer, loader, eval_loader = accelerator.prepare(model, optimizer, loader, eval_loader)
    # accelerate also steps at the end of the loader, after a shorter last accumulation
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise InputError(
            f"per_device_batch_size: {args.per_device_batch_size} x {args.gradient_accumulation_steps} "
            f"accumulation x {accelerator.num_processes} processes exceeds the {len(data.train)} training images."
        )
    return model, optimizer, loader, eval_loader, steps_per_epoch


def _finish(accelerator, model, summary: dict, task, processor, arguments: tuple) -> None:
    """Save the final model and the summary, and close the trackers."""
    model_args, data_args, args = arguments
    output_dir = Path(args.output_dir)
    # Every process takes part: under FSDP the weights are shards, gathered here into the main process's copy.
    weights = accelerator.get_state_dict(model)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        _save_final(unwrapped, weights, task, output_dir, model_args, data_args, args, processor)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    # Not end_training(): it also destroys the process group, whose gloo teardown can deadlock (see processes.py).
    for tracker in accelerator.trackers:
        tracker.finish()


def paired_initialization(model: SinkViTForImageClassification, seed: int) -> SinkViTForImageClassification:
    """The weights the plain model of this seed starts from, wherever the variant has the same parameter: variants
    trained with one seed then differ only by their gates, registers or pathway, so seeds can be compared in pairs.
    """
    config = copy.deepcopy(model.config)
    config.attention_gate, config.num_register_tokens, config.global_pathway_dim = "none", 0, 0
    torch.manual_seed(seed)
    plain = type(model)(config).state_dict()
    own = model.state_dict()
    shared = {name: value for name, value in plain.items() if name in own and own[name].shape == value.shape}
    model.load_state_dict(shared, strict=False)
    return model


def _checked_inputs(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments) -> dict:
    """The model's config overrides, once every argument has been checked (what would only fail later included)."""
    check_arguments(model_args, data_args, args)
    _check_output_dir(args.output_dir)
    fields_of = "a JSON object of SinkViTConfig fields"
    with _input_errors():
        overrides = json_object(model_args.model_overrides, "model_overrides", '{"num_hidden_layers": 6}', fields_of)
        check_variant(model_args.variant)
        workers = 0 if args.dataloader_num_workers is None else args.dataloader_num_workers
        loader_options(workers, args.dataloader_prefetch_factor, persistent=False)  # checked before any data is read
    known = {spec.name for spec in dataclasses.fields(SinkViTConfig)}
    for name in overrides:
        if name not in known:
            # A misspelt field would be dropped by the config without a word, and the model trained without it.
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            own = ", ".join(SinkViTConfig.__annotations__)
            raise InputError(
                f"model_overrides: {name!r} is no SinkViTConfig field;{hint} allowed: {own} "
                "(or a PreTrainedConfig field)."
            )
    return overrides


class ImageRun(NamedTuple):
    """What training an image classifier needs beside the loop."""

    model: SinkViTForImageClassification
    data: ImageData
    collate: Collate
    loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader
    processor: object


def _image_run(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, overrides: dict,
               accelerator: Accelerator) -> ImageRun:  # fmt: skip
    """The image classifier (paired initial weights), its image processor and the training and held-out loaders."""
    if data_args.streaming:
        data = _streamed(data_args, args, accelerator)
    else:
        with accelerator.main_process_first():  # one process prepares the data, the others read its cache
            data = load_image_data(
                data_args.dataset,
                image_column=data_args.image_column,
                label_column=data_args.label_column,
                train_split=data_args.train_split,
                eval_split=data_args.eval_split,
                options=data_args.dataset_options,
            )
    labels = dict(enumerate(data.labels))
    config = preset_config(model_args.variant, model_args.size, id2label=labels, **overrides)
    if data_args.dataset == CANVAS:
        _check_canvas(config.image_size, data_args.dataset_options)
    model = paired_initialization(SinkViTForImageClassification(config), args.seed)
    processor = default_image_processor(config)
    augmentation = None
    if data_args.augment:
        augmentation = Augmentation(scale=(data_args.crop_scale_min, 1.0), flip=data_args.flip)
    mode = "RGB" if config.num_channels == 3 else "L"
    collate = Collate(processor, mode=mode, prepare=data.prepare, augmentation=augmentation, seed=args.seed)
    workers = default_workers() if args.dataloader_num_workers is None else args.dataloader_num_workers
    if data_args.streaming:  # each process reads its own shards; a worker reads whole shards
        options = loader_options(min(workers, data.train.shards), args.dataloader_prefetch_factor, persistent=False)
        generator = torch.Generator().manual_seed(args.seed)  # not the global one: see below
        loader = torch.utils.data.DataLoader(
            data.train, args.per_device_batch_size, collate_fn=collate, generator=generator, **options
        )
        eval_loader = torch.utils.data.DataLoader(  # in this process: `limit` counts this process's rows
            data.eval, args.per_device_batch_size, collate_fn=Collate(processor, mode=mode)
        )
        return ImageRun(model, data, collate, loader, eval_loader, processor)
    # Its own generator: a loader that draws its worker seed from the global RNG when an iterator starts
    # would shift the model's dropout stream on resume, which starts an iterator mid-epoch. Training workers are
    # not persistent: they fork with the epoch's collate (its epoch seeds the augmentation), once an epoch.
    loader = torch.utils.data.DataLoader(
        Indexed(data.train),
        args.per_device_batch_size,
        shuffle=True,
        collate_fn=collate,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
        **loader_options(workers, args.dataloader_prefetch_factor, persistent=False),
    )
    eval_loader = torch.utils.data.DataLoader(
        Indexed(data.eval),
        args.per_device_batch_size,
        collate_fn=Collate(processor, mode=mode),
        **loader_options(workers, args.dataloader_prefetch_factor, persistent=True),
    )
    return ImageRun(model, data, collate, loader, eval_loader, processor)


def _streamed(data_args: DataArguments, args: TrainArguments, accelerator: Accelerator) -> ImageData:
    """The training and held-out splits streamed, this process's shards of each."""
    if not args.max_steps:
        raise InputError("max_steps: a streamed dataset has no length, so it needs max_steps > 0 (not num_epochs).")
    columns = (data_args.image_column, data_args.label_column)
    node = (accelerator.process_index, accelerator.num_processes)
    train = StreamedRows(data_args.dataset, data_args.train_split, columns, node, args.seed, data_args.shuffle_buffer)
    held_out = StreamedRows(
        data_args.dataset, data_args.eval_split, columns, node, args.seed, 0, limit=data_args.streaming_eval_images
    )
    if train.shards % accelerator.num_processes and accelerator.is_main_process:
        # datasets then gives each process every N-th row of every shard: all processes read all the data.
        logger.warning(
            f"dataset: {data_args.dataset!r} has {train.shards} shards for {accelerator.num_processes} processes; "
            "with a multiple of the process count each process would read only its own shards."
        )
    if held_out.labels != train.labels:  # streamed rows keep their split's class numbers: they must mean the same
        raise InputError(
            f"label_column: {data_args.dataset!r} split {data_args.eval_split!r} names its classes "
            f"{held_out.labels[:10]}, the training split {train.labels[:10]}; allowed: splits with one ClassLabel."
        )
    return ImageData(train, held_out, train.labels)


def _check_canvas(image_size, options: str) -> None:
    """The model must see the canvas unscaled: a resized canvas would blur the digit into its neighbours."""
    size = Canvas(**parse_options(options)).size
    if as_pair(image_size) != (size, size):
        raise InputError(
            f"model_overrides: image_size is {image_size}, the canvas {size} (dataset_options.size); "
            f"the model must see the canvas unscaled: set image_size to {size}."
        )


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, LayerScale or the CLS/register/position tokens."""
    decay, rest = [], []
    for name, parameter in model.named_parameters():
        tokens = "embeddings." in name and "patch_embeddings" not in name
        (decay if parameter.ndim >= 2 and not tokens else rest).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _batches(task, loader, step: int, steps_per_epoch, args: TrainArguments, accelerator, collate):
    """The batches from optimizer step `step` to the end of its epoch (image data) or of the run (tasks)."""
    accumulation = args.gradient_accumulation_steps
    if task is not None:
        for index in range(step * accumulation, (args.max_steps or 0) * accumulation):
            batch = task.batch(index, args.per_device_batch_size, accelerator.process_index)
            yield {name: value.to(accelerator.device) for name, value in batch.items()}
        return
    epoch = step // steps_per_epoch
    loader.set_epoch(epoch)
    collate.epoch = epoch
    skip = (step % steps_per_epoch) * accumulation
    yield from accelerator.skip_first_batches(loader, skip) if skip else loader


def _streamed_batches(task, loader, step: int, steps_per_epoch, args: TrainArguments, accelerator, collate):
    """The batches of a streamed dataset from optimizer step `step` on, epoch after epoch. A resumed run reads the
    stream again from the start and drops the batches already trained on: exact, at the price of reading them."""
    skip, epoch = step * args.gradient_accumulation_steps, 0
    while True:
        loader.dataset.set_epoch(epoch)
        collate.epoch = epoch
        produced = False
        for batch in loader:
            produced = True
            if skip:
                skip -= 1
                continue
            yield {name: value.to(accelerator.device) for name, value in batch.items()}
        if not produced:
            raise InputError("dataset: this process's stream is empty; allowed: a split with rows in every shard.")
        epoch += 1


@torch.no_grad()
def _evaluate(accelerator, model, task, eval_loader, data_args: DataArguments, args: TrainArguments) -> dict:
    model.eval()
    try:
        if task is not None:
            errors = []
            for index in range(data_args.task_eval_batches):
                batch = task.batch(10**9 + index, args.per_device_batch_size, accelerator.process_index)
                batch = {name: value.to(accelerator.device) for name, value in batch.items()}
                errors.append(accelerator.reduce(model(**batch)["loss"], "mean"))
            return {"mse": float(torch.stack(errors).mean())}
        correct = total = 0
        if data_args.streaming:  # each process its own held-out rows, counted here and summed once
            for batch in eval_loader:
                predictions = model(pixel_values=batch["pixel_values"].to(accelerator.device)).logits.argmax(-1)
                labels = batch["labels"].to(accelerator.device)
                readable = labels != IGNORED
                correct += int((predictions == labels)[readable].sum())
                total += int(readable.sum())
            counts = accelerator.reduce(torch.tensor([correct, total], device=accelerator.device), "sum").tolist()
            return {"accuracy": counts[0] / max(counts[1], 1), "images": int(counts[1])}
        for batch in eval_loader:
            predictions = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
            predictions, labels = accelerator.gather_for_metrics((predictions, batch["labels"]))
            readable = labels != IGNORED
            correct += int((predictions == labels)[readable].sum())
            total += int(readable.sum())
        return {"accuracy": correct / max(total, 1), "images": total}
    finally:
        model.train()


def _summary(accelerator, model, state: TrainState, evaluation: dict, collate: Collate | None) -> dict:
    """The run summary (summary.json): steps, final loss, held-out figures, stability, skipped images, checksums."""
    skipped = None if collate is None else int(accelerator.reduce(torch.tensor(state.unreadable), "sum"))
    return {
        "steps": state.step,
        "final_loss": state.recent_losses[-1] if state.recent_losses else None,
        "evaluation": evaluation,
        "stability": {
            "loss_spikes": state.spikes,
            "largest_grad_norm": state.largest_grad,
            "largest_activation": state.largest_activation,
        },
        "skipped_images": skipped,
        # Decoded in workers, the examples stay there (each is logged as a warning): only this process's are kept.
        "skipped_examples": [] if collate is None else collate.skipped_examples,
        "processes": accelerator.num_processes,
        # One sum of all parameters per process: equal when the ranks stayed in sync.
        "parameter_checksums": gather_object([sum(float(p.detach().double().sum()) for p in model.parameters())]),
    }


def _save_final(model, weights: dict, task, output_dir: Path, model_args, data_args, args, processor) -> None:
    arguments = {"model": asdict(model_args), "data": asdict(data_args), "train": asdict(args)}
    folder = output_dir / "model"
    if task is None:
        save_checkpoint(model, folder, image_processor=processor, state_dict=weights)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")
    (folder / "training_args.json").write_text(json.dumps(arguments, indent=1))


def _flat_config(*groups) -> dict:
    return {f"{type(group).__name__}.{key}": value for group in groups for key, value in asdict(group).items()}
