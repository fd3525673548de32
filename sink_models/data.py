"""Image-classification data on the `datasets` library: scikit-learn's digits and canvas digits (offline), a local
imagefolder or a Hub dataset id; the image processor's transforms with optional augmentation; a collate that skips
corrupt images.
"""

import io
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from .errors import InputError, first_line, json_object

logger = logging.getLogger(__name__)

DIGITS = "digits"
CANVAS = "canvas-digits"
IGNORED = -100  # the label of an unreadable image: cross-entropy and the accuracy leave it out
INK = 0.25  # a pixel belongs to a digit where its upscaled ink exceeds this share of the full range


@dataclass
class ImageData:
    """Train and held-out splits with columns `image` (undecoded) and `label`, and the class names."""

    train: datasets.Dataset
    eval: datasets.Dataset
    labels: list[str]
    # Applied to every decoded training image before augmentation, with the row's generator (canvas digits: the
    # placement, drawn anew each epoch); the held-out images come ready.
    prepare: Callable[[Image.Image, random.Random], Image.Image] | None = None


def load_image_data(
    name: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    eval_split: str = "test",
    options: str | dict = "{}",
) -> ImageData:
    """`digits`, `canvas-digits` (`options`: a `Canvas`'s fields, as a dict or JSON object), a local imagefolder
    directory, or a Hub dataset id; errors name the choices before any work."""
    options = parse_options(options)
    if options and name != CANVAS:
        raise InputError(f"dataset_options: {name!r} takes none (got {sorted(options)}); only {CANVAS!r} has options.")
    if name == DIGITS:
        return digits()
    if name == CANVAS:
        return canvas_digits(Canvas(**options))
    dataset = load_folder_or_hub(
        name, "dataset", f"'digits', {CANVAS!r}, 'nop', 'broadcast', a local imagefolder directory or a Hub dataset id"
    )
    for split in (train_split, eval_split):
        if split not in dataset:
            raise InputError(f"split: {name!r} has no split {split!r}; it has {sorted(dataset)}.")
    columns = dataset[train_split].column_names
    for option, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in columns:
            raise InputError(f"{option}: {name!r} has no column {column!r}; its columns are {columns}.")
    # One label mapping, the training split's, for every split: encoded split by split, a held-out split lacking a
    # class (or holding another) would number its classes differently and be scored against the wrong ones.
    feature = dataset[train_split].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        labels = [str(name) for name in feature.names]
    else:
        labels = sorted({str(value) for value in dataset[train_split].unique(label_column) if value is not None})

    def prepare(split: str) -> datasets.Dataset:
        rows = dataset[split].select_columns([image_column, label_column])
        rows = rows.rename_columns({image_column: "image", label_column: "label"})
        rows = encode_labels(rows, labels, f"label_column: {name!r} split {split!r}")
        return rows.cast_column("image", datasets.Image(decode=False))

    return ImageData(prepare(train_split), prepare(eval_split), labels)


def encode_labels(rows: datasets.Dataset, labels: list[str], where: str) -> datasets.Dataset:
    """`rows`' `label` column as a ClassLabel of `labels`, matched by name; a label outside `labels` is an InputError
    naming it (never another class's number)."""
    feature = rows.features["label"]
    names = [str(name) for name in feature.names] if isinstance(feature, datasets.ClassLabel) else None
    if names == labels:
        return rows
    values = rows.unique("label")
    found = {str(names[value]) if names is not None else str(value) for value in values if value is not None}
    unknown = sorted(found - set(labels)) + (["None"] if None in values else [])
    if unknown:
        raise InputError(
            f"{where} has labels {unknown[:5]} that the training split does not; allowed: its classes {labels[:20]}."
        )
    index = {label: i for i, label in enumerate(labels)}
    target = rows.features.copy()
    target["label"] = datasets.ClassLabel(names=labels)

    def relabel(batch: list) -> dict:
        return {"label": [index[str(names[v]) if names is not None else str(v)] for v in batch]}

    return rows.map(relabel, input_columns="label", batched=True, features=target)  # the images stay undecoded


def load_folder_or_hub(name: str, option: str, allowed: str) -> datasets.DatasetDict:
    """A local imagefolder directory or a Hub dataset id; anything else is one line naming `option` and `allowed`."""
    try:
        if os.path.isdir(name):
            return datasets.load_dataset("imagefolder", data_dir=name)
        return datasets.load_dataset(name)
    except Exception as error:  # noqa: BLE001 -- datasets raises many kinds; all mean "no such dataset here"
        cause = first_line(error, 200)
        raise InputError(f"{option}: {name!r} could not be loaded ({cause}); allowed: {allowed}.") from error


def digits(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 handwritten 8 x 8 digits as PNG images, split once and for all (seed 0: 1,438 / 359)."""
    (train_pixels, train_labels), (test_pixels, test_labels) = _digit_split(test_fraction, seed)
    return ImageData(_split(train_pixels, train_labels), _split(test_pixels, test_labels), [str(d) for d in range(10)])


def _digit_split(test_fraction: float, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((train pixels, labels), (test pixels, labels)): uint8 8 x 8 digits, split by digit image."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    order = np.random.RandomState(seed).permutation(len(pixels))
    cut = len(pixels) - int(round(test_fraction * len(pixels)))
    return tuple((pixels[part], bunch.target[part]) for part in (order[:cut], order[cut:]))


def _split(pixels: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    images = [{"bytes": _png(p), "path": None} for p in pixels]
    return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features)


MAX_CANVAS = 2048  # pixels a side: a 20,000-pixel canvas would need gigabytes per image


@dataclass(frozen=True)
class Canvas:
    """A `size` x `size` grey canvas holding one digit upscaled to `digit_size` at a random position, `distractors`
    other digits of the same split at `distractor_size` (clutter the label does not name), and Gaussian noise of
    standard deviation `noise` (a share of the full range). Most patches of a ViT then carry nothing: the setting
    in which the zoo's image models form sinks. `blank` leaves the labelled digit out (the same draws, so the same
    noise and distractors): a canvas with nothing to find, whose label no pixel shows."""

    size: int = 64  # at most MAX_CANVAS: each canvas is drawn in float64 before it is quantised
    digit_size: int = 16
    noise: float = 0.1
    distractors: int = 0
    distractor_size: int = 8
    seed: int = 0  # the held-out placements; training placements come from the training seed
    blank: bool = False

    def __post_init__(self):
        if not isinstance(self.blank, bool):
            raise InputError(f"dataset_options.blank: got {self.blank!r}; allowed: true or false.")
        for name in ("size", "digit_size", "distractor_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_CANVAS:
                raise InputError(f"dataset_options.{name}: got {value!r}; allowed: an int from 1 to {MAX_CANVAS}.")
        if self.digit_size > self.size or self.distractor_size > self.size:
            raise InputError(
                f"dataset_options.size: the canvas ({self.size}) must hold the digit ({self.digit_size}) and the "
                f"distractors ({self.distractor_size}); allowed: size >= both."
            )
        if not isinstance(self.distractors, int) or self.distractors < 0:
            raise InputError(f"dataset_options.distractors: got {self.distractors!r}; allowed: an int >= 0.")
        if not isinstance(self.noise, int | float) or not 0 <= self.noise <= 1:
            raise InputError(f"dataset_options.noise: got {self.noise!r}; allowed: a number in [0, 1].")

    def render(self, digit: np.ndarray, rng: random.Random, pool: np.ndarray) -> np.ndarray:
        """The canvas (uint8) for one 8 x 8 digit; distractors are drawn from `pool`."""
        canvas = np.zeros((self.size, self.size), dtype=np.float32)
        for _ in range(self.distractors):
            self._paste(canvas, pool[rng.randrange(len(pool))], self.distractor_size, rng)
        # Last: the labelled digit is never covered; a blank canvas draws its place all the same.
        self._paste(np.zeros_like(canvas) if self.blank else canvas, digit, self.digit_size, rng)
        noise = np.random.RandomState(rng.getrandbits(32)).normal(0.0, 255 * self.noise, canvas.shape)
        return np.clip(np.round(canvas + noise), 0, 255).astype(np.uint8)

    def _paste(self, canvas: np.ndarray, digit: np.ndarray, size: int, rng: random.Random) -> None:
        scaled = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR), np.float32)
        top, left = rng.randint(0, self.size - size), rng.randint(0, self.size - size)
        region = canvas[top : top + size, left : left + size]
        np.maximum(region, scaled, out=region)

    def render_with_labels(
        self, digit: np.ndarray, rng: random.Random, pool: np.ndarray, label: int, pool_labels: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`render`'s canvas (same draws from `rng`, same bytes) and its pixel label map (uint8): 0 for background,
        1 + class where a digit's upscaled ink exceeds `INK` of the full range. Distractors carry their own class when
        `pool_labels` is given (a patch holding a 3 describes a 3, named by the label or not), else background; where
        digits overlap the later one wins, so the labelled digit, pasted last, is never covered."""
        canvas = np.zeros((self.size, self.size), dtype=np.float32)
        label_map = np.zeros((self.size, self.size), dtype=np.uint8)
        for _ in range(self.distractors):
            index = rng.randrange(len(pool))
            value = 0 if pool_labels is None else 1 + int(pool_labels[index])
            self._paste_labelled(canvas, label_map, pool[index], self.distractor_size, rng, value)
        if self.blank:
            self._paste_labelled(np.zeros_like(canvas), np.zeros_like(label_map), digit, self.digit_size, rng, 0)
        else:
            self._paste_labelled(canvas, label_map, digit, self.digit_size, rng, 1 + int(label))
        noise = np.random.RandomState(rng.getrandbits(32)).normal(0.0, 255 * self.noise, canvas.shape)
        return np.clip(np.round(canvas + noise), 0, 255).astype(np.uint8), label_map

    def _paste_labelled(
        self, canvas: np.ndarray, label_map: np.ndarray, digit: np.ndarray, size: int, rng: random.Random, value: int
    ) -> None:
        # `_paste`'s draws in `_paste`'s order, so that the canvas stays byte-identical to `render`'s.
        scaled = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR), np.float32)
        top, left = rng.randint(0, self.size - size), rng.randint(0, self.size - size)
        region = canvas[top : top + size, left : left + size]
        np.maximum(region, scaled, out=region)
        label_map[top : top + size, left : left + size][scaled > INK * 255] = value


def parse_options(options: str | dict) -> dict:
    """A dataset's options from a JSON object (as recipes and the command line give them) or a dict."""
    parsed = json_object(options, "dataset_options", '{"size": 64}')
    allowed = {f.name for f in fields(Canvas)}
    unknown = sorted(set(parsed) - allowed)
    if unknown:
        raise InputError(f"dataset_options: unknown {unknown}; allowed: {', '.join(sorted(allowed))}.")
    return parsed


def canvas_digits(canvas: Canvas = Canvas()) -> ImageData:
    """Canvas digits: the digits split by digit image; the held-out canvases are rendered once (placements fixed by
    `canvas.seed`), the training digits are placed by `ImageData.prepare` with each row's generator (anew each
    epoch, exactly again on resume), distractors from their own split only."""
    (train_pixels, train_labels), (test_pixels, test_labels) = _digit_split(0.2, 0)
    rendered = np.stack(
        [canvas.render(p, random.Random(f"{canvas.seed}-test-{i}"), test_pixels) for i, p in enumerate(test_pixels)]
    )

    def prepare(image: Image.Image, rng: random.Random) -> Image.Image:
        return Image.fromarray(canvas.render(np.asarray(image.convert("L")), rng, train_pixels))

    labels = [str(d) for d in range(10)]
    return ImageData(_split(train_pixels, train_labels), _split(rendered, test_labels), labels, prepare)


def write_canvas_folder(folder: str | os.PathLike, canvas: Canvas = Canvas(), splits=("train", "test")) -> Path:
    """The canvases as an imagefolder (`folder/<split>/<digit>/<row>.png`, grey PNGs), for any tool that reads image
    files: the test split holds exactly the held-out canvases the zoo is evaluated on; the training digits are each
    placed once (seed `canvas.seed`). A folder that exists is refused, never replaced."""
    from .files import atomic_folder

    folder = Path(folder)
    unknown = sorted(set(splits) - {"train", "test"})
    if unknown or not splits:
        raise InputError(f"splits: got {list(splits)}; allowed: one or both of 'train', 'test'.")
    if folder.exists():
        raise InputError(f"out: {str(folder)!r} exists; allowed: a new folder (nothing is overwritten).")
    data = canvas_digits(canvas)
    with atomic_folder(folder) as staging:
        for split in splits:
            rows = data.eval if split == "test" else data.train
            for i, row in enumerate(rows):
                image = Image.open(io.BytesIO(row["image"]["bytes"]))
                if split == "train":
                    image = data.prepare(image, random.Random(f"{canvas.seed}-train-{i}"))
                target = staging / split / data.labels[row["label"]] / f"{i:05d}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                image.save(target)
    return folder


def canvas_dense(
    canvas: Canvas = Canvas(), split: str = "eval", limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canvases, pixel label maps, image labels) of a split of `canvas_digits(canvas)`, deterministic. "eval" gives
    exactly its held-out canvases (same draws); "train" places the training digits once, from generators keyed by
    `canvas.seed` and the row (training runs place them anew each epoch: these are a fixed draw for probes)."""
    if split not in ("train", "eval"):
        raise InputError(f"split: got {split!r}; allowed: 'train', 'eval'.")
    (train_pixels, train_labels), (test_pixels, test_labels) = _digit_split(0.2, 0)
    pixels, labels = (test_pixels, test_labels) if split == "eval" else (train_pixels, train_labels)
    key = "test" if split == "eval" else "dense-train"
    rendered = [
        canvas.render_with_labels(p, random.Random(f"{canvas.seed}-{key}-{i}"), pixels, y, labels)
        for i, (p, y) in enumerate(zip(pixels[:limit], labels[:limit], strict=True))
    ]
    return np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered]), labels[:limit]


def patch_labels(label_map: np.ndarray, patch_size: int | tuple[int, int], min_share: float = 0.5) -> np.ndarray:
    """(..., rows, columns) patch labels of (..., height, width) pixel label maps: the digit class (1 + class) with
    the most pixels in the patch when it covers at least `min_share` of it, background (0) otherwise."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    height, width = label_map.shape[-2:]
    if height % ph or width % pw:
        raise InputError(f"patch_size: the {height}x{width} map is not a multiple of the patch size {ph}x{pw}.")
    patches = label_map.reshape(*label_map.shape[:-2], height // ph, ph, width // pw, pw).swapaxes(-3, -2)
    patches = patches.reshape(*patches.shape[:-2], ph * pw).astype(np.int64)
    counts = np.stack([(patches == c).sum(-1) for c in range(int(label_map.max()) + 1)], -1)
    counts[..., 0] = -1  # background wins only when no digit covers enough of the patch
    best = counts.argmax(-1)
    return np.where(counts.max(-1) >= min_share * ph * pw, best, 0).astype(np.uint8)


def ink_patches(label_map: np.ndarray, patch_size: int | tuple[int, int]) -> np.ndarray:
    """(..., rows, columns) booleans of (..., height, width) pixel label maps: True where the patch holds any digit
    ink (a labelled pixel, of the named digit or of a distractor)."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    height, width = label_map.shape[-2:]
    if height % ph or width % pw:
        raise InputError(f"patch_size: the {height}x{width} map is not a multiple of the patch size {ph}x{pw}.")
    patches = label_map.reshape(*label_map.shape[:-2], height // ph, ph, width // pw, pw)
    return (patches > 0).any(axis=(-3, -1))


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
    accuracy ignore: batches keep their size, so processes under accelerate stay in step. `prepare` (a
    dataset's own step: the canvas placement) and augmentation draw from a generator seeded by (seed, epoch, row),
    so a resumed run sees exactly the images of an uninterrupted one.
    """

    processor: object
    mode: str = "RGB"
    prepare: Callable[[Image.Image, random.Random], Image.Image] | None = None  # ImageData.prepare
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
                example = f"row {index}: {type(error).__name__}: {error}"
                if len(self.skipped_examples) < 10:
                    self.skipped_examples.append(example)
                # A loader worker's counters die with it: the log keeps what it skipped.
                logger.warning("unreadable image skipped: %s", example)
                images.append(Image.new(self.mode, (8, 8)))
                labels.append(IGNORED)
                continue
            rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
            if self.prepare is not None:
                image = self.prepare(image, rng).convert(self.mode)
            if self.augmentation is not None:
                image = self.augmentation(image, rng)
            images.append(image)
            labels.append(row["label"])
        # Everything the processor returns: SigLIP2's also marks its padding patches and their grid.
        features = dict(self.processor(images, return_tensors="pt"))
        return {**features, "labels": torch.tensor(labels, dtype=torch.long)}


def _decode(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if image.get("bytes") is not None:
        decoded = Image.open(io.BytesIO(image["bytes"]))
    else:
        decoded = Image.open(image["path"])
    decoded.load()  # read now, so that a truncated file fails here
    return decoded


def default_workers() -> int:
    """Loader workers for this machine: all cores but one (at most 8), none on two cores or fewer, where a worker
    would only take time from the model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def loader_options(workers: int, prefetch_factor: int, persistent: bool) -> dict:
    """DataLoader keywords: workers that decode and augment, pinned memory for a GPU, prefetching."""
    if type(workers) is not int or workers < 0:
        raise InputError(f"dataloader_num_workers: got {workers!r}; allowed: None (from the cores) or an int >= 0.")
    if type(prefetch_factor) is not int or prefetch_factor < 1:
        raise InputError(f"dataloader_prefetch_factor: got {prefetch_factor!r}; allowed: an int >= 1.")
    options = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    if workers:
        options |= {"persistent_workers": persistent, "prefetch_factor": prefetch_factor}
    return options


class StreamedRows(torch.utils.data.IterableDataset):
    """One split of a dataset streamed (datasets' IterableDataset): this process's shards
    (`split_dataset_by_node`), shuffled through a buffer anew each epoch, as (index, row) pairs for `Collate`; an
    index is unique over processes and loader workers (it seeds the row's augmentation). `limit` stops each
    process's stream after that many rows (held-out sets of a fixed size)."""

    def __init__(self, name: str, split: str, columns: tuple[str, str], node: tuple[int, int], seed: int, buffer: int,
                 limit: int | None = None):  # fmt: skip
        from datasets.distributed import split_dataset_by_node

        try:
            stream = datasets.load_dataset(name, split=split, streaming=True)
        except Exception as error:  # noqa: BLE001 -- datasets raises many kinds; all mean "cannot stream this"
            raise InputError(
                f"dataset: {name!r} split {split!r} cannot be streamed ({first_line(error, 200)})."
            ) from error
        image, label = columns
        names = stream.features or {}
        if image not in names or label not in names:
            raise InputError(f"columns: streamed {name!r} has columns {sorted(names)}; needed {image!r} and {label!r}.")
        if not isinstance(names[label], datasets.ClassLabel):
            raise InputError(f"label_column: streamed {name!r}'s {label!r} is not a ClassLabel; a stream cannot be "
                             "class-encoded: give the dataset ClassLabel features.")  # fmt: skip
        self.labels = [str(name) for name in names[label].names]
        stream = stream.select_columns([image, label])
        renames = {old: new for old, new in ((image, "image"), (label, "label")) if old != new}
        stream = stream.rename_columns(renames) if renames else stream
        stream = split_dataset_by_node(stream.cast_column("image", datasets.Image(decode=False)), *node)
        self.stream = stream.shuffle(seed=seed, buffer_size=buffer) if buffer else stream
        self.rank, self.limit = node[0], limit

    @property
    def shards(self) -> int:
        return self.stream.num_shards

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        first = (self.rank * 64 + (worker.id if worker else 0)) * 10**9
        for position, row in enumerate(self.stream):
            if self.limit is not None and position >= self.limit:
                return
            yield first + position, row


class Indexed(torch.utils.data.Dataset):
    """A datasets.Dataset whose items carry their row number (the augmentation seed)."""

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, dict]:
        return index, self.dataset[index]
