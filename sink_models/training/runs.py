"""The two kinds of training run behind one interface, which is all the loop calls: an image classifier on image
data (read whole, or streamed) and a TokenRegressor on a synthetic sink task. `make_run` picks and builds one."""

import abc
import copy
import logging
import math
from collections.abc import Iterator
from pathlib import Path

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
from .resume import TrainState

logger = logging.getLogger(__name__)


class Run(abc.ABC):
    """What the loop needs of a run: its model (the prepared one once `prepare` has run), the batches from a step
    on, each batch's loss, the held-out evaluation, the summary's skipped images and the saved model."""

    def __init__(
        self, model: torch.nn.Module, accelerator: Accelerator, data_args: DataArguments, args: TrainArguments
    ) -> None:
        self.model, self.accelerator, self.data_args, self.args = model, accelerator, data_args, args

    def prepare(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer, prepared with the model by accelerate. Only those two: batches generated or streamed are
        each process's own, so accelerate must neither dispatch nor re-split them."""
        self.model, optimizer = self.accelerator.prepare(self.model, optimizer)
        return optimizer

    def total_steps(self) -> int:
        """The optimizer steps of the run."""
        return self.args.max_steps

    @abc.abstractmethod
    def batches(self, step: int) -> Iterator[dict]:
        """The training batches from optimizer step `step` on (to the end of its epoch where the run has epochs), on
        the device."""

    def unreadable(self, batch: dict) -> int:
        """The batch's unreadable images (none: generated batches)."""
        return 0

    @abc.abstractmethod
    def loss(self, outputs, batch: dict, unreadable: int) -> torch.Tensor:
        """The loss of the model's `outputs` on `batch`."""

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The held-out figures of the summary, the model in eval mode."""
        self.model.eval()
        try:
            return self.held_out()
        finally:
            self.model.train()

    @abc.abstractmethod
    def held_out(self) -> dict:
        """The held-out figures (called by `evaluate`)."""

    def skipped(self, state: TrainState) -> dict:
        """The summary's count of unreadable training images and examples of them (null: no images read)."""
        return {"skipped_images": None, "skipped_examples": []}

    @abc.abstractmethod
    def save(self, weights: dict, folder: Path) -> None:
        """The final model, of these `weights` (every process's shards gathered), into `folder`."""


class TaskRun(Run):
    """A TokenRegressor on a synthetic sink task: each batch generated from its number, no epochs, no images."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, overrides: dict,
                 accelerator: Accelerator):  # fmt: skip
        self.task = SinkTask(data_args.dataset, dim=data_args.task_dim, length=data_args.task_length, seed=args.seed)
        config = self.task.model_config(**VARIANTS[model_args.variant], **overrides)
        model = TokenRegressor(config, learn_positions=self.task.kind == "broadcast")  # as in the paper's two toys
        super().__init__(model, accelerator, data_args, args)

    def total_steps(self) -> int:
        if not self.args.max_steps:
            raise InputError(
                f"max_steps: got 0; allowed: an int > 0 (the task {self.data_args.dataset!r} has no epochs)."
            )
        return self.args.max_steps

    def batches(self, step: int) -> Iterator[dict]:
        accumulation = self.args.gradient_accumulation_steps
        for index in range(step * accumulation, self.args.max_steps * accumulation):
            yield self._batch(index)

    def _batch(self, index: int) -> dict:
        batch = self.task.batch(index, self.args.per_device_batch_size, self.accelerator.process_index)
        return {name: value.to(self.accelerator.device) for name, value in batch.items()}

    def loss(self, outputs, batch: dict, unreadable: int) -> torch.Tensor:
        return outputs["loss"]

    def held_out(self) -> dict:
        errors = []
        for index in range(self.data_args.task_eval_batches):
            batch = self._batch(10**9 + index)
            errors.append(self.accelerator.reduce(self.model(**batch)["loss"], "mean"))
        return {"mse": float(torch.stack(errors).mean())}

    def save(self, weights: dict, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.accelerator.unwrap_model(self.model).config.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")


class ImageRun(Run):
    """An image classifier (paired initial weights) on image data read whole: epochs of a shuffled loader."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, overrides: dict,
                 accelerator: Accelerator):  # fmt: skip
        self.data = self._data(data_args, args, accelerator)
        labels = dict(enumerate(self.data.labels))
        config = preset_config(model_args.variant, model_args.size, id2label=labels, **overrides)
        if data_args.dataset == CANVAS:
            check_canvas(config.image_size, data_args.dataset_options)
        model = paired_initialization(SinkViTForImageClassification(config), args.seed)
        super().__init__(model, accelerator, data_args, args)
        self.processor = default_image_processor(config)
        augmentation = None
        if data_args.augment:
            augmentation = Augmentation(scale=(data_args.crop_scale_min, 1.0), flip=data_args.flip)
        self.mode = "RGB" if config.num_channels == 3 else "L"
        self.collate = Collate(
            self.processor, mode=self.mode, prepare=self.data.prepare, augmentation=augmentation, seed=args.seed
        )
        workers = default_workers() if args.dataloader_num_workers is None else args.dataloader_num_workers
        self.loader, self.eval_loader = self._loaders(workers)

    @staticmethod
    def _data(data_args: DataArguments, args: TrainArguments, accelerator: Accelerator) -> ImageData:
        with accelerator.main_process_first():  # one process prepares the data, the others read its cache
            return load_image_data(
                data_args.dataset,
                image_column=data_args.image_column,
                label_column=data_args.label_column,
                train_split=data_args.train_split,
                eval_split=data_args.eval_split,
                options=data_args.dataset_options,
            )

    def _loaders(self, workers: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
        """The training and held-out loaders."""
        # Its own generator: a loader that draws its worker seed from the global RNG when an iterator starts
        # would shift the model's dropout stream on resume, which starts an iterator mid-epoch. Training workers are
        # not persistent: they fork with the epoch's collate (its epoch seeds the augmentation), once an epoch.
        loader = torch.utils.data.DataLoader(
            Indexed(self.data.train),
            self.args.per_device_batch_size,
            shuffle=True,
            collate_fn=self.collate,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.args.seed),
            **loader_options(workers, self.args.dataloader_prefetch_factor, persistent=False),
        )
        eval_loader = torch.utils.data.DataLoader(
            Indexed(self.data.eval),
            self.args.per_device_batch_size,
            collate_fn=Collate(self.processor, mode=self.mode),
            **loader_options(workers, self.args.dataloader_prefetch_factor, persistent=True),
        )
        return loader, eval_loader

    def prepare(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer, prepared by accelerate with the model and both loaders (which it splits between the
        processes); sets the optimizer steps of an epoch."""
        prepared = self.accelerator.prepare(self.model, optimizer, self.loader, self.eval_loader)
        self.model, optimizer, self.loader, self.eval_loader = prepared
        # accelerate also steps at the end of the loader, after a shorter last accumulation
        self.steps_per_epoch = math.ceil(len(self.loader) / self.args.gradient_accumulation_steps)
        if self.steps_per_epoch == 0:
            raise InputError(
                f"per_device_batch_size: {self.args.per_device_batch_size} x {self.args.gradient_accumulation_steps} "
                f"accumulation x {self.accelerator.num_processes} processes exceeds the {len(self.data.train)} "
                "training images."
            )
        return optimizer

    def total_steps(self) -> int:
        return self.args.max_steps or math.ceil(self.args.num_epochs * self.steps_per_epoch)

    def batches(self, step: int) -> Iterator[dict]:
        """The batches from optimizer step `step` to the end of its epoch."""
        epoch = step // self.steps_per_epoch
        self.loader.set_epoch(epoch)
        self.collate.epoch = epoch
        skip = (step % self.steps_per_epoch) * self.args.gradient_accumulation_steps
        yield from self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader

    def unreadable(self, batch: dict) -> int:
        """The batch's images the collate could not read (labelled IGNORED); one device sync."""
        return int((batch["labels"] == IGNORED).sum())

    def loss(self, outputs, batch: dict, unreadable: int) -> torch.Tensor:
        if unreadable == len(batch["labels"]):
            return outputs.logits.sum() * 0.0  # every image unreadable: same calls as the other ranks
        return outputs["loss"]

    def held_out(self) -> dict:
        correct = total = 0
        for batch in self.eval_loader:
            predictions = self.model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
            predictions, labels = self.accelerator.gather_for_metrics((predictions, batch["labels"]))
            readable = labels != IGNORED
            correct += int((predictions == labels)[readable].sum())
            total += int(readable.sum())
        return {"accuracy": correct / max(total, 1), "images": total}

    def skipped(self, state: TrainState) -> dict:
        return {
            "skipped_images": int(self.accelerator.reduce(torch.tensor(state.unreadable), "sum")),
            # Decoded in workers, the examples stay there (each is logged as a warning): only this process's are kept.
            "skipped_examples": self.collate.skipped_examples,
        }

    def save(self, weights: dict, folder: Path) -> None:
        unwrapped = self.accelerator.unwrap_model(self.model)
        save_checkpoint(unwrapped, folder, image_processor=self.processor, state_dict=weights)


class StreamedImageRun(ImageRun):
    """An image classifier on a streamed dataset: each process reads its own shards, epoch after epoch, for
    max_steps (a stream has no length), and counts its own held-out rows."""

    prepare = Run.prepare  # the model and the optimizer only: a stream is this process's own
    total_steps = Run.total_steps  # max_steps, which opening the stream checked

    @staticmethod
    def _data(data_args: DataArguments, args: TrainArguments, accelerator: Accelerator) -> ImageData:
        """The training and held-out splits streamed, this process's shards of each."""
        if not args.max_steps:
            raise InputError("max_steps: a streamed dataset has no length, so it needs max_steps > 0 (not num_epochs).")
        columns = (data_args.image_column, data_args.label_column)
        node = (accelerator.process_index, accelerator.num_processes)
        train = StreamedRows(
            data_args.dataset, data_args.train_split, columns, node, args.seed, data_args.shuffle_buffer
        )
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

    def _loaders(self, workers: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
        """The training and held-out loaders; a worker reads whole shards."""
        options = loader_options(
            min(workers, self.data.train.shards), self.args.dataloader_prefetch_factor, persistent=False
        )
        generator = torch.Generator().manual_seed(self.args.seed)  # not the global one: see ImageRun._loaders
        loader = torch.utils.data.DataLoader(
            self.data.train, self.args.per_device_batch_size, collate_fn=self.collate, generator=generator, **options
        )
        eval_loader = torch.utils.data.DataLoader(  # in this process: `limit` counts this process's rows
            self.data.eval, self.args.per_device_batch_size, collate_fn=Collate(self.processor, mode=self.mode)
        )
        return loader, eval_loader

    def batches(self, step: int) -> Iterator[dict]:
        """The batches from optimizer step `step` on, epoch after epoch. A resumed run reads the stream again from
        the start and drops the batches already trained on: exact, at the price of reading them."""
        skip, epoch = step * self.args.gradient_accumulation_steps, 0
        while True:
            self.loader.dataset.set_epoch(epoch)
            self.collate.epoch = epoch
            produced = False
            for batch in self.loader:
                produced = True
                if skip:
                    skip -= 1
                    continue
                yield {name: value.to(self.accelerator.device) for name, value in batch.items()}
            if not produced:
                raise InputError("dataset: this process's stream is empty; allowed: a split with rows in every shard.")
            epoch += 1

    def held_out(self) -> dict:
        """Each process its own held-out rows, counted here and summed once."""
        device = self.accelerator.device
        correct = total = 0
        for batch in self.eval_loader:
            predictions = self.model(pixel_values=batch["pixel_values"].to(device)).logits.argmax(-1)
            labels = batch["labels"].to(device)
            readable = labels != IGNORED
            correct += int((predictions == labels)[readable].sum())
            total += int(readable.sum())
        counts = self.accelerator.reduce(torch.tensor([correct, total], device=device), "sum").tolist()
        return {"accuracy": counts[0] / max(counts[1], 1), "images": int(counts[1])}


def make_run(model_args: ModelArguments, data_args: DataArguments, args: TrainArguments, overrides: dict,
             accelerator: Accelerator) -> Run:  # fmt: skip
    """The run these arguments ask for, its model built (with the config `overrides`) and its data opened."""
    if data_args.dataset in TASKS:
        kind = TaskRun
    else:
        kind = StreamedImageRun if data_args.streaming else ImageRun
    return kind(model_args, data_args, args, overrides, accelerator)


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
