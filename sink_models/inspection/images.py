"""The images `sink-models inspect` diagnoses: a folder, PIL images, a `datasets` dataset or a built-in set, and
their batches through the model's image processor; every image bounded before it is decoded (its header's size) and
before it is processed (the sizes the processor's settings give)."""

import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import InputError, first_line

# The built-in set, made offline from scikit-learn's two bundled photos. (view, crop box as fractions of width and
# height: left, top, right, bottom, mirrored): whole photos, crops at different places and scales, mirrored crops;
# the processor resizes each to the model's input size.
VIEWS = (
    ("whole", (0.0, 0.0, 1.0, 1.0), False),
    ("centre crop", (0.2, 0.1, 0.8, 0.9), False),
    ("top-left zoom", (0.05, 0.05, 0.4, 0.55), False),
    ("mirrored bottom-right crop", (0.45, 0.35, 1.0, 1.0), True),
)
PHOTOS = ("china.jpg", "flower.jpg")
# Pixels per image, as decoded and at every step of the image processor: the command's bound (an 8000 x 8000 photo; the
# Space sets its own). A stock processor's crop keeps its output small; this catches a resize to a huge size.
MAX_PIXELS = 64_000_000
# The processor methods whose sizes `processed_pixels` predicts (transformers' own; a class with its own resize is not).
PREDICTED = {
    "resize": {"PilBackend.resize", "TorchvisionBackend.resize"},
    "center_crop": {"PilBackend.center_crop", "TorchvisionBackend.center_crop"},
    "pad": {"PilBackend.pad", "TorchvisionBackend.pad"},
    "_preprocess": {
        "PilBackend._preprocess",
        "TorchvisionBackend._preprocess",
        "BeitImageProcessorPil._preprocess",
        "BeitImageProcessor._preprocess",
        "DINOv3ViTImageProcessor._preprocess",
        "Siglip2ImageProcessorPil._preprocess",
        "Siglip2ImageProcessor._preprocess",
    },
}
DESCRIPTION = (
    f"{len(PHOTOS) * len(VIEWS)} built-in images made from scikit-learn's bundled sample photos "
    f"({' and '.join(PHOTOS)}: {', '.join(view for view, _, _ in VIEWS)})"
)


@dataclass
class ImageSet:
    """The images to diagnose, where they came from, and the files or rows skipped because they could not be read."""

    source: str
    names: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)  # indices of images the processor could not take

    @property
    def used(self) -> list[str]:
        return [name for i, name in enumerate(self.names) if i not in self.failed]


def collect_images(
    images=None, *, dataset: str | None = None, split: str = "train", max_images: int = 16, mode: str = "RGB"
) -> ImageSet:
    """At most `max_images` images in PIL `mode` from a folder, a list of PIL images, a `datasets` id or local
    imagefolder path, or (neither given) the built-in set."""
    if images is not None and dataset is not None:
        raise InputError("images, dataset: give one of them, not both.")
    if dataset is not None:
        return _dataset_images(dataset, split, max_images, mode)
    if isinstance(images, str | os.PathLike):
        return _folder_images(Path(images), max_images, mode)
    if images is not None:
        images = list(images)[:max_images]
        if not images:
            raise InputError("images: got an empty list; allowed: a folder, PIL images, or None (built-in set).")
        names = [f"image {i}" for i in range(len(images))]
        return ImageSet(f"{len(images)} images given by the caller", names, [image.convert(mode) for image in images])
    samples = builtin_images()
    chosen = samples[:max_images]
    source = DESCRIPTION if len(chosen) == len(samples) else f"{len(chosen)} of the {DESCRIPTION}"
    return ImageSet(source, [name for name, _ in chosen], [image.convert(mode) for _, image in chosen])


def builtin_images() -> list[tuple[str, Image.Image]]:
    """The built-in set as (name, RGB image) pairs, the same on every call: every view of every photo."""
    from sklearn.datasets import load_sample_image

    images = []
    for photo in PHOTOS:
        image = Image.fromarray(load_sample_image(photo))
        width, height = image.size
        for view, (left, top, right, bottom), mirrored in VIEWS:
            crop = image.crop((round(left * width), round(top * height), round(right * width), round(bottom * height)))
            if mirrored:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            images.append((f"{photo} ({view})", crop.convert("RGB")))
    return images


def _folder_images(folder: Path, max_images: int, mode: str) -> ImageSet:
    if not folder.is_dir():
        raise InputError(f"images: {str(folder)!r} is not a folder.")
    files = sorted(path for path in folder.iterdir() if path.is_file())
    if not files:
        raise InputError(f"images: the folder {str(folder)!r} has no files.")
    found = ImageSet("")
    for path in files:
        if len(found.images) == max_images:
            break
        _add(found, path.name, path, mode)
    if not found.images:
        raise InputError(f"images: none of the {len(files)} files in {str(folder)!r} is an image PIL can read.")
    found.source = f"{len(found.images)} image files from the folder {folder}"
    return found


def _dataset_images(dataset: str, split: str, max_images: int, mode: str) -> ImageSet:
    import datasets

    try:
        # Streaming: only the rows used are read, not a whole Hub dataset.
        rows = datasets.load_dataset(dataset, split=split, streaming=True)
    except Exception as error:  # datasets raises many kinds; all mean "no such dataset or split here"
        raise InputError(f"dataset: {dataset!r} (split {split!r}) could not be loaded: {first_line(error)}") from None
    features = rows.features or {}
    column = next((name for name, kind in features.items() if isinstance(kind, datasets.Image)), None)
    if column is None:
        raise InputError(f"dataset: {dataset!r} has no column of Image type; its columns: {list(features)}.")
    rows = rows.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    found = ImageSet("")
    for index, row in enumerate(rows):
        if len(found.images) == max_images:
            break
        value = row[column] or {}
        name = Path(value["path"]).name if value.get("path") else f"row {index}"
        _add(found, name, io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path"), mode)
    if not found.images:
        raise InputError(f"dataset: {dataset!r} (split {split!r}) has no image PIL can read.")
    found.source = f"{len(found.images)} images from the {split!r} split of the dataset {dataset}, column {column!r}"
    return found


def _add(found: ImageSet, name: str, source, mode: str) -> None:
    try:
        image = Image.open(source)
    except Image.DecompressionBombError:  # PIL's own refusal, far above MAX_PIXELS
        message = f"images: {name} is over {MAX_PIXELS / 1e6:g} megapixels; allowed: smaller images."
        raise InputError(message) from None
    except (OSError, ValueError, SyntaxError, TypeError, AttributeError):
        found.skipped.append(name)
        return
    with image:
        check_pixels(name, image.width, image.height, MAX_PIXELS)  # from the header: nothing decoded yet
        try:
            found.images.append(image.convert(mode))  # convert() reads the pixels: a truncated file fails here
        except (OSError, ValueError, SyntaxError, TypeError, AttributeError):
            found.skipped.append(name)
            return
    found.names.append(name)


def check_pixels(name: str, width: int, height: int, most: int) -> None:
    """Refuses an image of more than `most` pixels (read from its header, before it is decoded)."""
    if width * height > most:
        raise InputError(
            f"images: {name} is {width:,} x {height:,} pixels, over {most / 1e6:g} megapixels; allowed: smaller images."
        )


def processed_pixels(processor, width: int, height: int) -> tuple[int, int]:
    """(the pixels of the largest image `processor` holds while it processes a `width` x `height` image, the pixels
    it hands the model), from the processor's settings alone, before it runs: transformers' own arithmetic on sizes.

    Raises an `InputError` for a processor whose sizes its settings do not give (its own resize, or settings that
    are not positive integers)."""
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width

    kind = type(processor)
    unknown = [name for name, known in PREDICTED.items() if getattr(kind, name).__qualname__ not in known]
    if not kind.__module__.startswith("transformers.") or unknown:
        raise InputError(
            f"images: the image processor {kind.__name__} sizes images in its own way, which cannot be bounded before "
            "it runs; allowed: transformers' processors that resize by their settings (ViT, BiT, CLIP, SigLIP...)."
        )
    if getattr(processor, "max_num_patches", None) is not None:  # NaFlex: resized to fit, then padded to that
        patch, most = _positive(processor, "patch_size"), _positive(processor, "max_num_patches")
        from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

        out_height, out_width = get_image_size_for_max_num_patches(height, width, patch, most)
        return max(width * height, out_height * out_width, most * patch * patch), most * patch * patch
    steps = [(height, width)]
    if getattr(processor, "do_resize", False):
        size = processor.size
        edges = {name: _positive(size, name) for name in ("shortest_edge", "longest_edge", "max_height", "max_width")}
        if edges["shortest_edge"] and edges["longest_edge"]:
            steps.append(get_size_with_aspect_ratio((height, width), edges["shortest_edge"], edges["longest_edge"]))
        elif edges["shortest_edge"]:
            shape = np.broadcast_to(np.uint8(0), (1, height, width))  # a view of one byte: only its shape is read
            steps.append(
                get_resize_output_image_size(shape, edges["shortest_edge"], False, None, ChannelDimension.FIRST)
            )
        elif edges["max_height"] and edges["max_width"]:
            steps.append(get_image_size_for_max_height_width((height, width), edges["max_height"], edges["max_width"]))
        else:
            steps.append((_positive(size, "height", True), _positive(size, "width", True)))
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        steps.append((_positive(crop, "height", True), _positive(crop, "width", True)))
    if getattr(processor, "do_pad", False) and getattr(processor, "pad_size", None) is not None:
        pad = processor.pad_size
        steps.append((_positive(pad, "height", True), _positive(pad, "width", True)))
    return max(h * w for h, w in steps), steps[-1][0] * steps[-1][1]


def _positive(settings, name: str, required: bool = False) -> int | None:
    """A size setting of the processor: a positive integer (None where it is absent and not `required`)."""
    value = getattr(settings, name, None)
    if (value is None and required) or (value is not None and (type(value) is not int or value < 1)):
        raise InputError(f"images: the image processor's {name} is {value!r}; allowed: a positive integer.")
    return value


def _batches(processor, found: ImageSet, batch_size: int, progress: bool) -> Iterator[dict]:
    """The processor's whole output (pixel_values and any masks or shapes) per batch, as plain dicts of tensors.

    The progress bar opens when the first batch is asked for: an architecture diagnose refuses prints one line. Every
    image is bounded first (`MAX_PIXELS` at each step of the processor), except by a processor of the checkpoint's own
    code, which the user chose to trust (its sizes with it)."""
    if type(processor).__module__.startswith("transformers."):
        for name, image in zip(found.names, found.images, strict=True):
            largest = processed_pixels(processor, image.width, image.height)[0]
            if largest > MAX_PIXELS:
                raise InputError(
                    f"images: the image processor makes {largest / 1e6:.1f} megapixels of {name}, over "
                    f"{MAX_PIXELS / 1e6:g}; allowed: a processor that resizes to a smaller size."
                )
    bar = tqdm(total=len(found.images), unit="image", desc="diagnose", file=sys.stderr, disable=not progress)
    try:
        for start in range(0, len(found.images), batch_size):
            indices = list(range(start, min(start + batch_size, len(found.images))))
            try:
                batch = _process(processor, [found.images[i] for i in indices])
            except Exception:  # one image the processor cannot take: find it, skip it, keep the others
                indices = [i for i in indices if _processes(processor, found, i)]
                batch = _process(processor, [found.images[i] for i in indices]) if indices else None
            if batch is not None:
                yield batch
            bar.update(min(batch_size, len(found.images) - start))
    finally:
        bar.close()


def _process(processor, images: list[Image.Image]) -> dict:
    return dict(processor(images=images, return_tensors="pt"))


def _processes(processor, found: ImageSet, index: int) -> bool:
    try:
        _process(processor, [found.images[index]])
    except Exception:  # any failure of the processor on this image
        found.failed.add(index)
        found.skipped.append(found.names[index])
        return False
    return True
