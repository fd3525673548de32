"""Evaluate a checkpoint: top-1 / top-5 accuracy and the sink diagnostics on the same images, in one forward pass.

Used by eval/run.py. A checkpoint is a local folder or a Hub id: our SinkViT models (remote code) or a stock
transformers ViT / DINOv2 (with or without registers, with or without a classification head).
"""

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from ..data import (
    CANVAS,
    IGNORED,
    Collate,
    ImageData,
    Indexed,
    default_workers,
    load_image_data,
    loader_options,
    parse_options,
)
from ..diagnostics import Grid, SinkReport, diagnose
from ..diagnostics.capture import adapter_for
from ..diagnostics.diagnose import model_inputs
from ..diagnostics.families import SUPPORTED, family_of, vision_config
from ..errors import InputError, first_line
from ..interventions import InterventionReport, intervene
from ..interventions.report import METRICS
from ..loading import auto_config, check_weight_files, from_pretrained, read_config, source_where
from ..probes.dense import DenseOptions, dense_probe
from ..probes.linear import ProbeSettings
from .cards import ZOO_VERSION
from .content import content_sets_block, ink_block

PACKAGES = ("sink-models", "torch", "transformers", "huggingface_hub", "accelerate", "datasets", "evaluate")


@dataclass
class EvalArguments:
    model: list[str] = field(default_factory=list, metadata={"help": "local folders or Hub ids (default: the suite)"})
    revision: str | None = field(default=None, metadata={"help": "branch, tag or commit of Hub ids"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run checkpoint code (zoo models: always)"})
    dataset: str | None = field(
        default=None, metadata={"help": "digits, canvas-digits, an imagefolder or Hub id (default: recipe's)"}
    )
    dataset_options: str | None = field(default=None, metadata={"help": "JSON object (default: the recipe's)"})
    image_column: str | None = None
    label_column: str | None = None
    split: str | None = field(default=None, metadata={"help": "default: the recipe's held-out split, else 'test'"})
    max_images: int | None = field(default=None, metadata={"help": "first N images of the split (default: all)"})
    batch_size: int = 64
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa, flex_attention, ..."})
    autocast: str = field(default="no", metadata={"help": "no, bf16 or fp16: the forward under torch.autocast"})
    dataloader_num_workers: int | None = field(
        default=None, metadata={"help": "processes that decode images; default: from the machine's cores (0 on two)"}
    )
    results_dir: str | None = field(
        default=None, metadata={"help": "default: the repository's results/ for its suites, else runs/eval/results"}
    )
    cards_dir: str | None = field(
        default=None, metadata={"help": "default: the repository's model_cards/ for its suites, else runs/eval/cards"}
    )
    hub_org: str = field(default="sink-models", metadata={"help": "org of the Hub repos in the cards' snippets"})
    hub_revision: str = field(default=ZOO_VERSION, metadata={"help": "the tag the cards' usage snippets pin"})
    synthetic_models: list[str] = field(
        default_factory=list, metadata={"help": "synthetic-task checkpoints to analyse (results/synthetic.md)"}
    )
    retrain_steps: int = field(default=0, metadata={"help": "retrain the synthetic models for N steps (0: as given)"})
    work_dir: str = field(default="runs/synthetic", metadata={"help": "where retrained synthetic models go"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds of retrained synthetic models"})
    interventions: bool = field(
        default=False, metadata={"help": "also edit each model's sink heads (a card section; one forward per edit)"}
    )
    intervention_images: int = field(
        default=64, metadata={"help": "images edited (and as many more held out for the mean sink value)"}
    )
    dense_probe: bool = field(
        default=False,
        metadata={"help": "a linear segmentation probe on the frozen patch tokens (canvas-digits, or a dataset below)"},
    )
    dense_probe_dataset: str | None = field(
        default=None, metadata={"help": "segmentation dataset: Hub id or imagefolder (default: canvas-digits' maps)"}
    )
    dense_probe_train_split: str = "train"
    dense_probe_eval_split: str = field(default="validation", metadata={"help": "of a segmentation dataset"})
    dense_probe_image_column: str = "image"
    dense_probe_mask_column: str = field(default="mask", metadata={"help": "class-index masks (ADE20K: annotation)"})
    dense_probe_num_labels: int | None = field(default=None, metadata={"help": "classes (ADE20K 150, VOC 20)"})
    dense_probe_reduce_labels: bool = field(
        default=False, metadata={"help": "pixel 0 ignored, k -> k - 1 (ADE20K; VOC as the paper probes it)"}
    )
    dense_probe_ignore_index: int = 255
    dense_probe_resolution: int | None = field(
        default=None, metadata={"help": "images and masks resized to this square (paper: 512; default: the model's)"}
    )
    dense_probe_train_images: int | None = field(default=None, metadata={"help": "first N training images (all)"})
    dense_probe_min_share: float = field(
        default=0.25, metadata={"help": "canvas-digits: a patch is a digit's when its ink covers this share"}
    )
    dense_probe_layer: int | None = field(default=None, metadata={"help": "a block's output (default: final)"})
    dense_probe_optimizer: str = field(
        default="lbfgs", metadata={"help": "lbfgs (converged, deterministic) or adamw (the paper's schedule)"}
    )
    dense_probe_epochs: int = field(default=25, metadata={"help": "adamw epochs (paper: ADE20K 25, VOC 100)"})
    dense_probe_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "adamw probe seeds"})
    sensitivity: bool = field(
        default=False,
        metadata={"help": "also count sinks under a grid of the rule's choices (docs/science.md section 9)"},
    )
    content_sets: bool = field(
        default=False, metadata={"help": "canvas-digits: also diagnose blank and cluttered held-out canvases"}
    )
    intervention_models: list[str] = field(
        default_factory=list, metadata={"help": "zoo checkpoints whose causal edits go to results/interventions.md"}
    )


@dataclass
class Checkpoint:
    """A loaded checkpoint and what was recorded about it."""

    name: str
    source: str
    model: torch.nn.Module
    processor: object
    training_args: dict | None
    training_summary: dict | None
    revision: str | None
    commit: str | None


def checkpoint_name(source: str) -> str:
    """results/<name>.json: a local folder's name (its run's name for train/run.py's `<run>/model`), or
    `org--name` for a Hub id."""
    if os.path.isdir(source):
        path = Path(source).resolve()
        return path.parent.name if path.name == "model" and (path / "training_args.json").is_file() else path.name
    return source.strip("/").replace("/", "--")


def load_checkpoint(
    source: str, *, revision: str | None, trust_remote_code: bool, attn_implementation: str = "sdpa"
) -> Checkpoint:
    """Load a checkpoint for evaluation; every way it can fail is an InputError naming the cause."""
    local = os.path.isdir(source)
    where = source_where(source, revision)
    training_args = _training_args(source, revision) if local else None
    _refuse_task_models(source, training_args)
    raw = read_config(source, revision, where)
    config = auto_config(source, revision, trust_remote_code, where)
    architectures = config.architectures or []
    if family_of(config) is None:
        raise InputError(
            f"model: {where} is a {', '.join(architectures) or config.model_type} checkpoint (model_type "
            f"{config.model_type!r}); the diagnostics support these families (model_type; dual encoders through their "
            f"vision tower): {', '.join(SUPPORTED)}."
        )
    check_weight_files(source, revision, raw, where)
    if not local:
        training_args = _training_args(source, revision)
        _refuse_task_models(source, training_args)
    # Accuracy needs a classification head; any other checkpoint of a supported family gets the diagnostics alone.
    head = any(name.endswith("ForImageClassification") for name in architectures)
    auto = AutoModelForImageClassification if head else AutoModel
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code, "attn_implementation": attn_implementation}
    try:
        model = from_pretrained(auto, source, config=config, **kwargs)
        processor = AutoImageProcessor.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as error:
        raise InputError(f"model: {where} could not be loaded: {first_line(error)}") from None
    return Checkpoint(
        name=checkpoint_name(source),
        source=source,
        model=model.eval(),
        processor=processor,
        training_args=training_args,
        training_summary=_recorded(source, revision, "training_summary.json"),
        revision=revision,
        commit=None if local else _snapshot_commit(source, revision),
    )


def _snapshot_commit(source: str, revision: str | None) -> str:
    """The commit a Hub revision resolved to: the name of the cache snapshot its config.json sits in."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, "config.json", revision=revision)).parent.name


def _recorded(source: str, revision: str | None, filename: str) -> dict | None:
    """A JSON object that train/run.py saves beside the weights; None if absent or unreadable."""
    if os.path.isdir(source):
        path = Path(source) / filename
        text = path.read_text() if path.is_file() else None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            text = Path(hf_hub_download(source, filename, revision=revision)).read_text()
        except (EntryNotFoundError, LocalEntryNotFoundError):
            text = None
    try:
        value = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _training_args(source: str, revision: str | None) -> dict | None:
    """training_args.json (the recipe: model, data and train groups); None if absent or of another layout."""
    args = _recorded(source, revision, "training_args.json")
    groups = ("model", "data", "train")
    return args if args is not None and all(isinstance(args.get(g), dict) for g in groups) else None


def stability(training_summary: dict | None, layers: list[dict]) -> dict:
    """The run's stability figures (from its training_summary.json; None when not trained here) and the largest
    token-norm max / median over layers on the evaluated images."""
    recorded = (training_summary or {}).get("stability") or {}
    ratios = [layer["token_norm_max_over_median"] for layer in layers if layer.get("token_norm_max_over_median")]
    return {
        "loss_spikes": recorded.get("loss_spikes"),
        "largest_grad_norm": recorded.get("largest_grad_norm"),
        "largest_activation": recorded.get("largest_activation"),
        "token_norm_max_over_median": max(ratios) if ratios else None,
    }


def _refuse_task_models(source: str, training_args: dict | None) -> None:
    dataset = (training_args or {}).get("data", {}).get("dataset")
    if dataset in ("nop", "broadcast"):
        raise InputError(
            f"model: {source!r} was trained on the synthetic {dataset} task, not on images; analyse it with "
            "--synthetic_models (or --suite synthetic)."
        )


@dataclass
class DataChoice:
    dataset: str
    split: str
    image_column: str
    label_column: str
    options: str


def data_choice(args: EvalArguments, checkpoint: Checkpoint) -> DataChoice:
    """The dataset to evaluate on: the options given, else the one the checkpoint was trained on."""
    recorded = (checkpoint.training_args or {}).get("data", {})
    dataset = args.dataset or recorded.get("dataset")
    if dataset is None:
        raise InputError(
            f"dataset: {checkpoint.source!r} records no training dataset; pass --dataset (digits, an imagefolder "
            "directory or a Hub dataset id)."
        )
    same = args.dataset is None or args.dataset == recorded.get("dataset")
    pick = lambda given, key, default: given or (recorded.get(key) if same else None) or default  # noqa: E731
    return DataChoice(
        dataset=dataset,
        split=pick(args.split, "eval_split", "test"),
        image_column=pick(args.image_column, "image_column", "image"),
        label_column=pick(args.label_column, "label_column", "label"),
        options=pick(args.dataset_options, "dataset_options", "{}"),
    )


def label_map(model: torch.nn.Module, labels: list[str]) -> tuple[list[int] | None, str | None]:
    """Dataset label index -> model class index by name, or (None, why accuracy is not measured)."""
    if not hasattr(model, "classifier"):
        return None, "no classification head (diagnostics only)"
    names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    index = {name: i for i, name in enumerate(names)}
    missing = [label for label in labels if label not in index]
    if missing:
        return None, f"the dataset's labels {missing[:5]} are not among the model's classes (diagnostics only)"
    return [index[label] for label in labels], None


def evaluate_checkpoint(
    checkpoint: Checkpoint, args: EvalArguments, metric, accelerator=None, show_progress: bool = False
) -> tuple[dict, SinkReport]:
    """Accuracy (when the model has a head for the dataset's labels) and the sink report: (results dict, report).

    Each process takes a contiguous share of the images, so under accelerate the report equals a single
    process's; predictions are gathered with `gather_for_metrics`.
    """
    choice = data_choice(args, checkpoint)
    if args.content_sets and choice.dataset != CANVAS:
        raise InputError(
            f"content_sets: {choice.dataset!r} has no content-controlled sets; allowed: {CANVAS!r} (its held-out "
            "canvases without their digit, and with a second one)."
        )
    model = checkpoint.model
    if accelerator is not None:
        model = model.to(accelerator.device)
    data = load_choice(choice)
    images = data.eval
    if args.max_images is not None:
        if args.max_images < 1:
            raise InputError(f"max_images: got {args.max_images}; allowed: a positive number of images.")
        images = images.select(range(min(args.max_images, len(images))))
    mapping, no_accuracy = label_map(model, data.labels)
    loader, indices = _eval_loader(checkpoint, images, args, accelerator)
    progress = tqdm(total=len(indices), desc=checkpoint.name, unit="img", disable=not show_progress)
    scores = _Scores(mapping, min(5, model.config.num_labels) if mapping is not None else 0, progress)
    with progress, autocast(args.autocast, next(model.parameters()).device):
        grid = Grid() if args.sensitivity else None
        report = diagnose(model, scores.readable(loader), accelerator=accelerator, on_outputs=scores.keep, grid=grid)
        content = _content(report, checkpoint, choice, args, accelerator, grid)  # under the same autocast
    dataset = {
        "name": choice.dataset,
        "options": parse_options(choice.options),
        "split": choice.split,
        "images": report.summary["images"],
        "unreadable_images": scores.unreadable_images(accelerator),
    }
    return {
        "name": checkpoint.name,
        "model": _model_record(checkpoint, model),
        "cost": measure_cost(model, next(iter(loader)) if len(loader) else None),
        "dataset": dataset,
        "processes": 1 if accelerator is None else accelerator.num_processes,
        "accuracy": scores.accuracy(metric, accelerator),
        "accuracy_note": no_accuracy,
        "sinks": report.summary,
        "layers": report.layers,
        "heads": report.heads,
        "thresholds": report.thresholds,
        "training": checkpoint.training_args,
        "stability": stability(checkpoint.training_summary, report.layers),
        "versions": package_versions(),
        "date": date.today().isoformat(),
    } | content | _opt_in(checkpoint, data, choice, args, accelerator, show_progress), report


def _content(
    report: SinkReport, checkpoint: Checkpoint, choice: DataChoice, args: EvalArguments, accelerator, grid: Grid | None
) -> dict:
    """On canvas-digits: where the patch sinks sit (on ink or not) and, opted in, the content-controlled sets (with
    the held-out canvases' `grid`)."""
    if choice.dataset != CANVAS:
        return {}
    block = {"ink": ink_block(report, parse_options(choice.options), adapter_for(checkpoint.model).patch_size)}
    if args.content_sets:
        loader = lambda images: _eval_loader(checkpoint, images, args, accelerator)[0]  # noqa: E731
        block["content_sets"] = content_sets_block(
            checkpoint.model, loader, choice.options, args.max_images, grid, accelerator
        )
    return block


class _Scores:
    """What the evaluation pass keeps beside the report: each image's top-k ranking against its label mapped to the
    model's classes (none when `mapping` is None), and the unreadable images (blanks labelled IGNORED by Collate),
    which are counted and left out of everything."""

    def __init__(self, mapping: list[int] | None, top: int, progress):
        self.mapping, self.top, self.progress = mapping, top, progress
        self.rows: list[tuple[list[int], int]] = []
        self.unreadable = 0

    def readable(self, batches):
        for batch in batches:
            fine = batch["labels"] != IGNORED
            self.unreadable += int((~fine).sum())
            self.progress.update(int((~fine).sum()))
            if fine.any():
                yield batch if fine.all() else {name: value[fine] for name, value in batch.items()}

    def keep(self, batch, outputs, count) -> None:
        self.progress.update(count)
        if self.mapping is None:
            return
        ranked = outputs.logits[:count].topk(self.top, dim=-1).indices.cpu().tolist()
        for ranking, label in zip(ranked, batch["labels"][:count].tolist(), strict=True):
            self.rows.append((ranking, self.mapping[label]))

    def unreadable_images(self, accelerator) -> int:
        if accelerator is None or accelerator.num_processes == 1:
            return self.unreadable
        return int(accelerator.reduce(torch.tensor(self.unreadable, device=accelerator.device), "sum"))

    def accuracy(self, metric, accelerator) -> dict | None:
        if self.mapping is None:
            return None
        rows = self.rows if accelerator is None else accelerator.gather_for_metrics(self.rows, use_gather_object=True)
        ks = [1, 5] if self.top >= 5 else [1]
        accuracy = metric.compute(predictions=[r for r, _ in rows], references=[y for _, y in rows], k=ks)
        return accuracy | {"images": len(rows)}


def _eval_loader(checkpoint: Checkpoint, images, args: EvalArguments, accelerator) -> tuple:
    """The evaluation loader over this process's contiguous share of `images`, and that share's indices."""
    model = checkpoint.model
    mode = "RGB" if getattr(vision_config(model.config), "num_channels", 3) == 3 else "L"
    indices = list(range(len(images)))
    if accelerator is not None and accelerator.num_processes > 1:
        with accelerator.split_between_processes(indices) as mine:
            indices = list(mine)
    workers = default_workers() if args.dataloader_num_workers is None else args.dataloader_num_workers
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(Indexed(images), indices),
        batch_size=args.batch_size,
        collate_fn=Collate(checkpoint.processor, mode=mode),
        **loader_options(workers, 2, persistent=False),
    )
    return loader, indices


def _model_record(checkpoint: Checkpoint, model) -> dict:
    return {
        "source": checkpoint.source,
        "revision": checkpoint.revision,
        "commit": checkpoint.commit,
        "class": type(model).__name__,
        "config_digest": config_digest(model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "attn_implementation": model.config._attn_implementation,
    }


def _opt_in(
    checkpoint: Checkpoint, data: ImageData, choice: DataChoice, args: EvalArguments, accelerator, progress
) -> dict:
    """The results of the opt-in measurements: the causal interventions and the dense probe."""
    extras = {}
    if args.interventions:
        causal = intervention_report(checkpoint, data, args.intervention_images, args.batch_size, accelerator)
        extras["interventions"] = intervention_block(causal)
    if args.dense_probe:
        extras["dense_probe"] = dense_probe_block(checkpoint, choice, args, progress)
    return extras


def autocast(precision: str, device: torch.device):
    """torch.autocast for `precision` (no, bf16 or fp16) on `device`; the metrics keep their float32 / float64."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "no":
        return contextlib.nullcontext()
    if precision not in dtypes:
        raise InputError(f"autocast: got {precision!r}; allowed: no, bf16 or fp16.")
    return torch.autocast(device.type, dtype=dtypes[precision])


def load_choice(choice: DataChoice) -> ImageData:
    """The images of `choice` (its split serves as both splits); a bad dataset is an InputError."""
    return load_image_data(
        choice.dataset,
        image_column=choice.image_column,
        label_column=choice.label_column,
        train_split=choice.split,
        eval_split=choice.split,
        options=choice.options,
    )


def intervention_report(
    checkpoint: Checkpoint, data: ImageData, count: int, batch_size: int = 64, accelerator=None
) -> InterventionReport:
    """`intervene` on the first `count` held-out images of `data` (labels as the model's classes, so the top-1 change
    is measured), with the next `count` as the held-out images of the mean sink value (the paper keeps them
    disjoint; with none left, the edited images serve). Under accelerate each process takes a contiguous share."""
    if type(count) is not int or count < 1:
        raise InputError(f"intervention_images: got {count!r}; allowed: a positive number of images.")
    model, images = checkpoint.model, data.eval
    mapping, _ = label_map(model, data.labels)
    mode = "RGB" if getattr(vision_config(model.config), "num_channels", 3) == 3 else "L"
    collate = Collate(checkpoint.processor, mode=mode)

    def batches(rows: range) -> list[dict]:
        rows = list(rows)
        if accelerator is not None and accelerator.num_processes > 1:
            with accelerator.split_between_processes(rows) as mine:
                rows = list(mine)
        out = [collate([(i, images[i]) for i in rows[at : at + batch_size]]) for at in range(0, len(rows), batch_size)]
        for batch in out:  # dataset label -> the model's class; without a head for these labels, no top-1 change
            labels = batch.pop("labels").tolist()
            if mapping is not None:
                batch["labels"] = torch.tensor([mapping[y] if y != IGNORED else IGNORED for y in labels])
        return out

    edited, held = range(min(count, len(images))), range(count, min(2 * count, len(images)))
    held_out = batches(held) if len(held) else None
    return intervene(model, batches(edited), held_out=held_out, accelerator=accelerator)


def dense_probe_block(checkpoint: Checkpoint, choice: DataChoice, args: EvalArguments, progress: bool = False) -> dict:
    """A linear probe of the frozen patch tokens (docs/science.md section 8) on `dense_probe_dataset`, or for a
    canvas-digits model on the label maps of its canvases: trained on the training split, scored on the held-out one
    (its first `max_images`)."""
    dataset = args.dense_probe_dataset or (CANVAS if choice.dataset == CANVAS else None)
    if dataset is None:
        raise InputError(
            f"dense_probe: {choice.dataset!r} has no dense labels; pass --dense_probe_dataset (a segmentation dataset "
            f"with a mask column: a Hub id or an imagefolder directory), or evaluate a {CANVAS!r} model."
        )
    if args.dense_probe_optimizer == "adamw":
        probe = ProbeSettings.paper(epochs=args.dense_probe_epochs, ignore_index=args.dense_probe_ignore_index)
    else:
        probe = ProbeSettings(optimizer=args.dense_probe_optimizer)
    options = DenseOptions(
        dataset=dataset,
        dataset_options=choice.options if dataset == choice.dataset else "{}",
        train_split=args.dense_probe_train_split,
        eval_split=args.dense_probe_eval_split,
        image_column=args.dense_probe_image_column,
        mask_column=args.dense_probe_mask_column,
        num_labels=args.dense_probe_num_labels,
        reduce_labels=args.dense_probe_reduce_labels,
        ignore_index=args.dense_probe_ignore_index,
        resolution=args.dense_probe_resolution,
        train_images=args.dense_probe_train_images,
        eval_images=args.max_images,
        min_share=args.dense_probe_min_share,
        layer=args.dense_probe_layer,
        probe=probe,
        seeds=tuple(args.dense_probe_seeds),
        progress=progress,
    )
    return dense_probe(checkpoint.model, checkpoint.processor, options)


def intervention_block(report: InterventionReport) -> dict:
    """The results JSON's `interventions`: settings, checks, skips, heads and the per-class tables of every metric
    (means over heads; the per-head rows and the per-image rows left out to keep the file small)."""
    tables = {metric: [_without(e, "per_head") for e in report.by_class(metric)] for metric in METRICS}
    fields = ("settings", "checks", "skipped", "heads")
    return {name: getattr(report, name) for name in fields} | {"by_class": tables}


def _without(entry: dict, key: str) -> dict:
    return {name: value for name, value in entry.items() if name != key}


@torch.no_grad()
def measure_cost(model: torch.nn.Module, batch: dict | None, rounds: int = 3) -> dict:
    """GFLOPs of one image's forward (torch's FLOP counter) and forward images/s (best of `rounds` timed batches of
    real images, on the model's device): the cost columns of the leaderboard. A dual encoder's is its vision tower's."""
    if batch is None:
        return {"gflops": None, "images_per_s": None}
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    adapter = adapter_for(model)
    inputs = {name: value.to(device) for name, value in model_inputs(batch, adapter).items()}
    forward = adapter.forward
    counter = FlopCounterMode(display=False)
    backend = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the counter misses the fused CPU sdpa kernels' matmuls
    try:
        with counter:
            forward(**{name: value[:1] for name, value in inputs.items()})
    finally:
        model.set_attn_implementation(backend)
    forward(**inputs)  # warm-up
    best = float("inf")
    pixel_values = inputs["pixel_values"]
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        forward(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return {"gflops": counter.get_total_flops() / 1e9, "images_per_s": len(pixel_values) / best}


def config_digest(config) -> str:
    """sha256 of the config's content (without its path and library version): equal configs, equal digests."""
    content = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset"):
        content.pop(key, None)
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def package_versions() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions
