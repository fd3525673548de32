"""Image-classification data on the `datasets` library: scikit-learn's digits (offline), a local imagefolder or a
Hub dataset id; the image processor's transforms with optional augmentation; a collate that skips corrupt images.
"""

import io
import os
import random
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from PIL import Image

from .errors import first_line

DIGITS = "digits"
IGNORED = -100  # the label of an unreadable image: cross-entropy and the accuracy leave it out


@dataclass
class ImageData:
    """Train and held-out splits with columns `image` (undecoded) and `label`, and the class names."""

    train: datasets.Dataset
    eval: datasets.Dataset
    labels: list[str]


def load_image_data(
    name: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    eval_split: str = "test",
) -> ImageData:
    """`digits`, a local imagefolder directory, or a Hub dataset id; errors name the choices before any work."""
    if name == DIGITS:
        return digits()
    try:
        if os.path.isdir(name):
            dataset = datasets.load_dataset("imagefolder", data_dir=name)
        else:
            dataset = datasets.load_dataset(name)
    except Exception as error:  # noqa: BLE001 -- datasets raises many kinds; all mean "no such dataset here"
        raise ValueError(
            f"dataset: {name!r} could not be loaded ({first_line(error, 200)}); "
            "allowed: 'digits', 'nop', 'broadcast', a local imagefolder directory or a Hub dataset id."
        ) from error
    for split in (train_split, eval_split):
        if split not in dataset:
            raise ValueError(f"split: {name!r} has no split {split!r}; it has {sorted(dataset)}.")
    columns = dataset[train_split].column_names
    for option, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in columns:
            raise ValueError(f"{option}: {name!r} has no column {column!r}; its columns are {columns}.")
    if not isinstance(dataset[train_split].features[label_column], datasets.ClassLabel):
        dataset = dataset.class_encode_column(label_column)  # any label values -> 0..K-1, names kept
    labels = dataset[train_split].features[label_column].names

    def prepare(split: datasets.Dataset) -> datasets.Dataset:
        split = split.select_columns([image_column, label_column])
        split = split.rename_columns({image_column: "image", label_column: "label"})
        return split.cast_column("image", datasets.Image(decode=False))

    return ImageData(prepare(dataset[train_split]), prepare(dataset[eval_split]), [str(label) for label in labels])


def digits(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 handwritten 8 x 8 digits as PNG images, split once and for all (seed 0: 1,438 / 359)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    order = np.random.RandomState(seed).permutation(len(pixels))
    cut = len(pixels) - int(round(test_fraction * len(pixels)))
    features = datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )

    def split(indices) -> datasets.Dataset:
        images = [{"bytes": _png(pixels[i]), "path": None} for i in indices]
        return datasets.Dataset.from_dict({"image": images, "label": bunch.target[indices].tolist()}, features)

    return ImageData(split(order[:cut]), split(order[cut:]), [str(d) for d in range(10)])


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Augmentation:
    """Random resized crop (area share in `scale`, aspect ratio in `ratio`) and horizontal flip, for training."""

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        width, height = image.size
        for _ in range(10):
            area = width * height * rng.uniform(*self.scale)
            aspect = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
            w, h = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                image = image.crop((left, top, left + w, top + h))
                break
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image


@dataclass
class Collate:
    """Decode, convert (grayscale, RGBA -> RGB), augment and process a list of dataset rows into a batch.

    An unreadable image is counted in `skipped` and replaced by a blank one labelled -100, which the loss and the
    accuracy ignore: batches keep their size, so processes under accelerate stay in step. Augmentation draws from
    a generator seeded by (seed, epoch, row), so a resumed run sees exactly the crops of an uninterrupted one.
    """

    processor: object
    mode: str = "RGB"
    augmentation: Augmentation | None = None
    seed: int = 0
    epoch: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def __call__(self, rows: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
        images, labels = [], []
        for index, row in rows:
            try:
                image = _decode(row["image"]).convert(self.mode)
            except Exception as error:  # noqa: BLE001 -- any decoding failure means a bad file: skip it
                self.skipped += 1
                if len(self.skipped_examples) < 10:
                    self.skipped_examples.append(f"row {index}: {type(error).__name__}: {error}")
                images.append(Image.new(self.mode, (8, 8)))
                labels.append(IGNORED)
                continue
            if self.augmentation is not None:
                image = self.augmentation(image, random.Random(f"{self.seed}-{self.epoch}-{index}"))
            images.append(image)
            labels.append(row["label"])
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor(labels, dtype=torch.long)}


def _decode(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if image.get("bytes") is not None:
        decoded = Image.open(io.BytesIO(image["bytes"]))
    else:
        decoded = Image.open(image["path"])
    decoded.load()  # read now, so that a truncated file fails here
    return decoded


class Indexed(torch.utils.data.Dataset):
    """A datasets.Dataset whose items carry their row number (the augmentation seed)."""

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, dict]:
        return index, self.dataset[index]
