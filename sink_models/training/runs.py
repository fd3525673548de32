"""What a run trains on: the model and its data (image data, streamed or not, or a synthetic sink task), their
batches, the held-out evaluation and the saved model."""

import copy
import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from ..checkpoint import default_image_processor, save_checkpoint
from ..data import (
    CANVAS,
    IGNORED,
    Augmentation,
    Collate,
    ImageData,
    Indexed,
    StreamedRows,
    default_workers,
    load_image_data,
    loader_options,
)
from ..errors import InputError
from ..modeling_sink_vit import SinkViTForImageClassification
from ..presets import VARIANTS, preset_config
from ..tasks import TASKS, SinkTask, TokenRegressor
from .arguments import DataArguments, ModelArguments, TrainArguments, check_canvas

logger = logging.getLogger(__name__)


def model_and_data(model_args, data_args, args, overrides: dict, accelerator) -> tuple:
    """(task or None, model, image data, collate, loader, held-out loader, processor); None where a task has none."""
    if data_args.dataset not in TASKS:
        return None, *_image_run(model_args, data_args, args, overrides, accelerator)
    task = SinkTask(data_args.dataset, dim=data_args.task_dim, length=data_args.task_length, seed=args.seed)
    config = task.model_config(**VARIANTS[model_args.variant], **overrides)
    model = TokenRegressor(config, learn_positions=task.kind == "broadcast")  # as in the paper's two toys
    return task, model, None, None, None, None, None


def prepare(accelerator, model, optimizer, loader, eval_loader, task, data, data_args, args) -> tuple:
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
        check_canvas(config.image_size, data_args.dataset_options)
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


def batches(task, loader, step: int, steps_per_epoch, args: TrainArguments, accelerator, collate):
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


def streamed_batches(task, loader, step: int, steps_per_epoch, args: TrainArguments, accelerator, collate):
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
def evaluate(accelerator, model, task, eval_loader, data_args: DataArguments, args: TrainArguments) -> dict:
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


def save_final(model, weights: dict, task, output_dir: Path, model_args, data_args, args, processor) -> None:
    arguments = {"model": asdict(model_args), "data": asdict(data_args), "train": asdict(args)}
    folder = output_dir / "model"
    if task is None:
        save_checkpoint(model, folder, image_processor=processor, state_dict=weights)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")
    (folder / "training_args.json").write_text(json.dumps(arguments, indent=1))
