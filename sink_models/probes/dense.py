"""Dense probes of a checkpoint (docs/science.md section 8): frozen patch features and patch / pixel labels from
canvas-digits' label maps, or from an image segmentation dataset (a Hub id or a local imagefolder with a mask column,
as ADE20K and Pascal VOC are published), then `probes.linear_probe` on them."""

import statistics
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data import CANVAS, Canvas, canvas_dense, load_folder_or_hub, parse_options, patch_labels
from ..diagnostics.capture import adapter_for
from ..errors import InputError
from .linear import ProbeSettings, layer_features, linear_probe

BATCH = 64


@dataclass
class DenseOptions:
    """What to probe on and how. For canvas-digits the labels are the digit (1 + class) covering `min_share` of a
    patch, else background (0). For a segmentation dataset each patch takes its most frequent labelled pixel; with
    `reduce_labels` (ADE20K, and VOC as the paper probes it) pixel 0 is ignored and k becomes k - 1, as transformers'
    `do_reduce_labels` does; `ignore_index` pixels (VOC's borders) are neither trained on nor scored. Images and masks
    are resized to `resolution` (image bilinear, mask nearest), the paper's fixed resize."""

    dataset: str = CANVAS
    dataset_options: str | dict = "{}"
    train_split: str = "train"
    eval_split: str | None = None
    image_column: str = "image"
    mask_column: str = "mask"
    num_labels: int | None = None
    reduce_labels: bool = False
    ignore_index: int = 255
    resolution: int | None = None
    train_images: int | None = None
    eval_images: int | None = None
    min_share: float = 0.25
    layer: int | None = None
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    seeds: tuple[int, ...] = (0,)
    progress: bool = False  # progress bars (stderr) for the two feature passes and the fit


@dataclass
class DenseSplit:
    """Images at the model's input size and their (images, height, width) int64 pixel labels."""

    images: list[Image.Image]
    masks: np.ndarray


def dense_probe(model: torch.nn.Module, processor, options: DenseOptions) -> dict:
    """The results block of a dense probe: patch and pixel mIoU, accuracy and per-class IoU on the held-out split
    (the mean over `options.seeds` for the seeded "adamw" probe, each seed's mIoU kept), with the settings."""
    if not options.seeds:
        raise InputError("dense_probe_seeds: got none; allowed: one or more integers.")
    adapter = adapter_for(model)
    canvas = options.dataset == CANVAS
    classes, names = (11, ["background", *map(str, range(10))]) if canvas else _label_set(options)
    split = {"train": _canvas(options, "train") if canvas else _segmentation(options, "train", adapter)}
    split["eval"] = _canvas(options, "eval") if canvas else _segmentation(options, "eval", adapter)
    features, labels = {}, {}
    for name, data in split.items():
        desc = f"dense probe: {name} features"
        features[name] = _features(model, processor, data.images, options.layer, canvas, desc, options.progress)
        _check_grid(features[name], data.masks, adapter.patch_size)
        labels[name] = torch.as_tensor(
            patch_labels(data.masks, adapter.patch_size, options.min_share)
            if canvas
            else majority_labels(data.masks, adapter.patch_size, options.ignore_index)
        ).long()
    runs = [_probe(features, labels, split, classes, options, seed, canvas) for seed in _seeds(options)]
    block = {key: _mean([getattr(run, key) for run in runs]) for key in _SCORES}
    settings = {
        "train_images": len(split["train"].images), "eval_images": len(split["eval"].images),
        "optimizer": options.probe.optimizer, "weight_decay": options.probe.weight_decay,
        "ignore_index": None if canvas else options.ignore_index, "features": _describe(options.layer),
        "resolution": list(split["eval"].masks.shape[1:]),
    }  # fmt: skip
    if canvas:
        settings["min_share"] = options.min_share
    else:
        settings["reduce_labels"] = options.reduce_labels
    if options.probe.optimizer == "adamw":
        settings |= {"epochs": options.probe.epochs, "lr": options.probe.lr, "seeds": list(options.seeds)}
        block["per_seed_miou"] = [run.miou for run in runs]
    return {
        "dataset": options.dataset,
        "split": "test" if canvas else _eval_split(options),
        "layer": options.layer,
        "classes": names,
        **block,
        "iou": {str(c): v for c, v in runs[0].iou.items()},
        "settings": settings,
    }


_SCORES = ("miou", "foreground_miou", "accuracy", "pixel_miou", "pixel_foreground_miou", "pixel_accuracy")


def _seeds(options: DenseOptions) -> tuple[int, ...]:
    return options.seeds if options.probe.optimizer == "adamw" else options.seeds[:1]  # L-BFGS has no randomness


def _probe(features, labels, split, classes, options, seed, canvas):
    ignore = None if canvas else options.ignore_index
    settings = ProbeSettings(**{**options.probe.__dict__, "seed": seed, "ignore_index": ignore})
    train_pixels = torch.as_tensor(split["train"].masks) if settings.optimizer == "adamw" else None
    return linear_probe(
        features["train"], labels["train"], features["eval"], labels["eval"], classes, settings,
        eval_pixel_labels=torch.as_tensor(split["eval"].masks), train_pixel_labels=train_pixels,
        background=0 if canvas else None, progress=options.progress,
    )  # fmt: skip


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _describe(layer: int | None) -> str:
    return "final normed patch tokens" if layer is None else f"block {layer}'s patch tokens, layer-normed"


def _check_grid(features: torch.Tensor, masks: np.ndarray, patch: tuple[int, int]) -> None:
    rows, columns = masks.shape[1] // patch[0], masks.shape[2] // patch[1]
    if rows * columns != features.shape[1]:
        raise InputError(
            f"dense_probe_resolution: {masks.shape[1]}x{masks.shape[2]} masks give {rows}x{columns} patches of "
            f"{patch[0]}x{patch[1]}, but the model returned {features.shape[1]} patch tokens."
        )


def _features(model, processor, images: list[Image.Image], layer, canvas: bool, desc: str, progress: bool):
    # Segmentation images come resized to the probe's resolution: the processor must not resize or crop them again.
    kwargs = {} if canvas else {"do_resize": False, "do_center_crop": False}
    starts = tqdm(range(0, len(images), BATCH), desc=desc, unit="batch", disable=not progress, leave=False)
    batches = (dict(processor(images[at : at + BATCH], return_tensors="pt", **kwargs)) for at in starts)
    return layer_features(model, batches, (layer,))[layer]


def _canvas(options: DenseOptions, split: str) -> DenseSplit:
    limit = options.train_images if split == "train" else options.eval_images
    images, maps, _ = canvas_dense(Canvas(**parse_options(options.dataset_options)), split, limit=limit)
    return DenseSplit([Image.fromarray(image) for image in images], maps.astype(np.int64))


def _label_set(options: DenseOptions) -> tuple[int, list[str]]:
    if type(options.num_labels) is not int or options.num_labels < 2:
        raise InputError(
            f"dense_probe_num_labels: got {options.num_labels!r}; a segmentation dataset needs its number of classes "
            "(ADE20K: 150 with --dense_probe_reduce_labels; VOC as the paper probes it: 20 with it)."
        )
    return options.num_labels, [str(c) for c in range(options.num_labels)]


def _eval_split(options: DenseOptions) -> str:
    return options.eval_split or "validation"


def _segmentation(options: DenseOptions, split: str, adapter) -> DenseSplit:
    name = options.train_split if split == "train" else _eval_split(options)
    rows = _load_split(options.dataset, name, (options.image_column, options.mask_column))
    limit = options.train_images if split == "train" else options.eval_images
    rows = rows.select(range(min(limit, len(rows)))) if limit else rows
    config = adapter.forward.config  # a dual encoder's vision tower's
    size = options.resolution or config.image_size
    if size % adapter.patch_size[0] or size % adapter.patch_size[1]:
        raise InputError(
            f"dense_probe_resolution: got {size}; allowed: a multiple of the patch size {adapter.patch_size}."
        )
    mode = "RGB" if getattr(config, "num_channels", 3) == 3 else "L"
    images, masks = [], []
    for row in rows:
        images.append(row[options.image_column].convert(mode).resize((size, size), Image.Resampling.BILINEAR))
        mask = np.asarray(row[options.mask_column].resize((size, size), Image.Resampling.NEAREST))
        if mask.ndim != 2:
            raise InputError(
                f"dense_probe_mask_column: {options.mask_column!r} holds {mask.ndim}-channel images; allowed: "
                "single-channel class-index masks (mode L, P or I)."
            )
        masks.append(mask.astype(np.int64))
    stacked = np.stack(masks)
    return DenseSplit(images, reduce_labels(stacked, options.ignore_index) if options.reduce_labels else stacked)


def _load_split(name: str, split: str, columns: tuple[str, str]) -> datasets.Dataset:
    allowed = f"{CANVAS!r}, a local imagefolder directory with a mask column or a Hub segmentation dataset id"
    found = load_folder_or_hub(name, "dense_probe_dataset", allowed)
    if split not in found:
        raise InputError(f"dense_probe split: {name!r} has no split {split!r}; it has {sorted(found)}.")
    for option, column in zip(("dense_probe_image_column", "dense_probe_mask_column"), columns, strict=True):
        if column not in found[split].column_names:
            raise InputError(
                f"{option}: {name!r} has no column {column!r}; its columns are {found[split].column_names} "
                "(a dataset without masks cannot be probed densely)."
            )
        if not isinstance(found[split].features[column], datasets.Image):
            raise InputError(f"{option}: {name!r}'s column {column!r} holds no images; a mask must be an image.")
    return found[split]


def reduce_labels(masks: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Pixel 0 ("other" in ADE20K, background in VOC) becomes `ignore_index`, class k becomes k - 1; pixels already
    at `ignore_index` stay ignored."""
    reduced = masks.astype(np.int64) - 1
    reduced[(masks == 0) | (masks == ignore_index)] = ignore_index
    return reduced


def majority_labels(masks: np.ndarray, patch: int | tuple[int, int], ignore_index: int = 255) -> np.ndarray:
    """(images, rows, columns) patch labels: each patch's most frequent labelled pixel class (the smallest on a tie),
    `ignore_index` where every pixel of the patch is ignored."""
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    images, height, width = masks.shape
    blocks = masks.reshape(images, height // ph, ph, width // pw, pw).swapaxes(2, 3).reshape(-1, ph * pw)
    kept = blocks != ignore_index
    classes = int(blocks[kept].max()) + 1 if kept.any() else 1
    counts = np.zeros((len(blocks), classes), np.int64)
    rows = np.nonzero(kept)[0]
    np.add.at(counts, (rows, blocks[kept]), 1)
    labels = np.where(kept.any(1), counts.argmax(1), ignore_index)
    return labels.reshape(images, height // ph, width // pw)
