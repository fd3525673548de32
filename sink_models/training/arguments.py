"""The arguments of a training run (the fields of train/run.py's recipes and options) and the checks of them made
before anything is built."""

import contextlib
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..configuration_sink_vit import SinkViTConfig, as_pair
from ..data import Canvas, loader_options, parse_options
from ..errors import InputError, is_int, json_object
from ..presets import VARIANTS, check_variant
from ..tasks import TASKS


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
def input_errors():
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


def checked_inputs(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments) -> dict:
    """The model's config overrides, once every argument has been checked (what would only fail later included)."""
    check_arguments(model_args, data_args, args)
    _check_output_dir(args.output_dir)
    fields_of = "a JSON object of SinkViTConfig fields"
    with input_errors():
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
    if data_args.streaming and data_args.dataset in TASKS:
        raise InputError(f"streaming: {data_args.dataset!r} is generated, not read; allowed: an image dataset.")
    return overrides


def check_canvas(image_size, options: str) -> None:
    """The model must see the canvas unscaled: a resized canvas would blur the digit into its neighbours."""
    size = Canvas(**parse_options(options)).size
    if as_pair(image_size) != (size, size):
        raise InputError(
            f"model_overrides: image_size is {image_size}, the canvas {size} (dataset_options.size); "
            f"the model must see the canvas unscaled: set image_size to {size}."
        )
