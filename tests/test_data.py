import random

import numpy as np
import pytest
import torch
from PIL import Image

from sink_models import preset_config
from sink_models.checkpoint import default_image_processor
from sink_models.data import Augmentation, Collate, Indexed, digits, load_image_data


def expected_pixels(image: Image.Image, size: int) -> np.ndarray:
    """The processor's output computed by hand: RGB, bilinear resize, [0, 1], then (x - 0.5) / 0.5."""
    array = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    return ((array - 0.5) / 0.5).transpose(2, 0, 1)


def test_digits_split_is_fixed():
    data, again = digits(), digits()
    assert (len(data.train), len(data.eval)) == (1438, 359) and data.labels == [str(d) for d in range(10)]
    assert data.eval["label"] == again.eval["label"]
    first = Image.open(__import__("io").BytesIO(data.train[0]["image"]["bytes"]))
    assert first.size == (8, 8) and first.mode == "L"


def test_collate_makes_normalised_batches():
    data = digits()
    collate = Collate(default_image_processor(preset_config("plain", "toy")))
    rows = [(i, data.eval[i]) for i in range(5)]
    batch = collate(rows)
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["labels"].tolist() == data.eval["label"][:5]
    image = Image.open(__import__("io").BytesIO(data.eval[2]["image"]["bytes"]))
    np.testing.assert_allclose(batch["pixel_values"][2].numpy(), expected_pixels(image, 32), atol=1e-5)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1


def make_folder(root, corrupt=False):
    colours = {"red": (200, 10, 10), "blue": (10, 10, 200)}
    for split in ("train", "test"):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, mode in enumerate(("RGB", "L", "RGBA")):
                Image.new("RGB", (20 + i, 12), colour).convert(mode).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def test_imagefolder_with_grayscale_rgba_and_a_corrupt_file(tmp_path):
    make_folder(tmp_path, corrupt=True)
    data = load_image_data(str(tmp_path))
    assert data.labels == ["blue", "red"] and (len(data.train), len(data.eval)) == (7, 6)
    collate = Collate(default_image_processor(preset_config("plain", "toy")))
    batch = collate(list(enumerate(data.train)))
    assert batch["pixel_values"].shape == (7, 3, 32, 32)  # the batch keeps its size ...
    ignored = batch["labels"] == -100  # ... and the broken file becomes a blank image the loss ignores
    assert ignored.sum() == 1 and collate.skipped == 1 and "row" in collate.skipped_examples[0]
    torch.testing.assert_close(batch["pixel_values"][ignored], torch.full((1, 3, 32, 32), -1.0))
    batch = {name: value[~ignored] for name, value in batch.items()}
    colours = {"red": (200, 10, 10), "blue": (10, 10, 200)}
    seen = []
    for image, label in zip(batch["pixel_values"], batch["labels"], strict=True):
        colour = colours[data.labels[label]]
        gray = Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0))  # what the grayscale file holds
        centre = ((image[:, 16, 16] + 1) / 2 * 255).round().tolist()
        assert centre in ([*colour], [gray] * 3), centre
        seen.append(centre == [gray] * 3)
    assert seen.count(True) == 2  # one grayscale file per class, converted to three equal channels


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "no-such-org/no-such-dataset"}, "could not be loaded .*allowed: 'digits', 'nop', 'broadcast'"),
        ({"image_column": "img"}, "image_column: .* has no column 'img'; its columns are"),
        ({"label_column": "y"}, "label_column: .* has no column 'y'"),
        ({"eval_split": "validation"}, "split: .* has no split 'validation'; it has \\['test', 'train'\\]"),
    ],
)
def test_bad_data_options_fail_before_any_work(tmp_path, kwargs, message):
    make_folder(tmp_path)
    kwargs = {"name": str(tmp_path), **kwargs}
    with pytest.raises(ValueError, match=message):
        load_image_data(kwargs.pop("name"), **kwargs)


def test_augmentation_is_seeded_by_epoch_and_row():
    data = digits()
    processor = default_image_processor(preset_config("plain", "toy"))
    collate = Collate(processor, augmentation=Augmentation(scale=(0.3, 0.6)), seed=1)
    rows = [(i, data.train[i]) for i in range(4)]
    first, again = collate(rows)["pixel_values"], collate(rows)["pixel_values"]
    assert torch.equal(first, again)
    collate.epoch = 1
    assert not torch.equal(first, collate(rows)["pixel_values"])
    image = Image.new("L", (40, 30))
    crop = Augmentation(scale=(0.25, 0.25), ratio=(1.0, 1.0), flip=False)(image, random.Random(0))
    assert crop.size == (17, 17)  # a quarter of the area, square: round(sqrt(300)) = 17


def test_indexed_rows_carry_their_number():
    data = digits()
    index, row = Indexed(data.eval)[7]
    assert index == 7 and row["label"] == data.eval[7]["label"]
