import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sink_models import preset_config
from sink_models.checkpoint import default_image_processor
from sink_models.data import Augmentation, Canvas, Collate, Indexed, canvas_digits, digits, load_image_data


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
        ({"name": "no-such-org/no-such-dataset"}, "could not be loaded .*allowed: 'digits', 'canvas-digits', 'nop'"),
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


def test_canvas_digits_keep_the_digit_split_and_fix_the_held_out_placements():
    data, again, plain = canvas_digits(Canvas(distractors=2)), canvas_digits(Canvas(distractors=2)), digits()
    assert data.train["image"] == plain.train["image"]  # the same digit images: the split is the digits split
    assert data.eval["label"] == plain.eval["label"] and data.labels == plain.labels
    assert data.eval["image"] == again.eval["image"]  # placements, distractors and noise fixed by Canvas.seed
    assert data.eval["image"] != canvas_digits(Canvas(distractors=2, seed=1)).eval["image"]
    assert Image.open(io.BytesIO(data.eval[0]["image"]["bytes"])).size == (64, 64)


def test_a_canvas_holds_the_upscaled_digit_once_and_nothing_else_without_noise():
    digit = np.asarray(Image.open(io.BytesIO(digits().eval[0]["image"]["bytes"])))
    canvas = Canvas(size=40, digit_size=12, noise=0.0).render(digit, random.Random(3), pool=digit[None])
    scaled = np.asarray(Image.fromarray(digit).resize((12, 12), Image.Resampling.BILINEAR))
    found = [(t, c) for t in range(29) for c in range(29) if np.array_equal(canvas[t : t + 12, c : c + 12], scaled)]
    assert len(found) == 1
    (top, left), outside = found[0], canvas.copy()
    outside[top : top + 12, left : left + 12] = 0
    assert not outside.any()


def test_distractors_come_from_the_pool_and_noise_has_the_asked_spread():
    blank, square = np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)
    canvas = Canvas(size=32, digit_size=8, noise=0.0, distractors=3, distractor_size=4)
    clutter = canvas.render(blank, random.Random(0), pool=square[None])
    assert set(np.unique(clutter)) == {0, 255} and 16 <= (clutter == 255).sum() <= 3 * 16
    noisy = Canvas(size=64, noise=0.1).render(blank, random.Random(0), pool=blank[None]).astype(float)
    # Half the Gaussian is clipped at 0: E|N(0, s)| clipped = s / sqrt(2 pi) for the mean.
    assert noisy.mean() == pytest.approx(25.5 / np.sqrt(2 * np.pi), rel=0.05)


def test_training_canvases_are_placed_anew_each_epoch_and_again_on_resume():
    data = canvas_digits(Canvas(size=32, digit_size=8))
    processor = default_image_processor(preset_config("plain", "toy", image_size=32, num_channels=1))
    rows = [(i, data.train[i]) for i in range(4)]

    def batch(epoch):
        return Collate(processor, mode="L", prepare=data.prepare, seed=5, epoch=epoch)(rows)["pixel_values"]

    assert batch(0).shape == (4, 1, 32, 32)
    assert torch.equal(batch(0), batch(0)) and not torch.equal(batch(0), batch(1))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("canvas-digits", '{"canvas": 64}', "dataset_options: unknown \\['canvas'\\]; allowed: blank, digit_size"),
        ("canvas-digits", '{"size": 12}', "dataset_options.size: the canvas \\(12\\) must hold the digit \\(16\\)"),
        ("canvas-digits", '{"size": 20000}', "dataset_options.size: got 20000; allowed: an int from 1 to 2048"),
        ("canvas-digits", '{"size": 0}', "dataset_options.size: got 0; allowed: an int from 1 to 2048"),
        ("canvas-digits", '{"distractors": -1}', "dataset_options.distractors: got -1; allowed: an int >= 0"),
        ("canvas-digits", '{"noise": 2}', "dataset_options.noise: got 2; allowed: a number in \\[0, 1\\]"),
        ("canvas-digits", "[64]", "dataset_options: got '\\[64\\]'; allowed: a JSON object"),
        ("digits", '{"size": 64}', "dataset_options: 'digits' takes none"),
    ],
)
def test_bad_dataset_options_are_named(name, options, message):
    with pytest.raises(ValueError, match=message):
        load_image_data(name, options=options)


def metadata_folder(root, splits: dict[str, list[str]]):
    """An imagefolder whose labels are strings in metadata.jsonl (not folder names): one image per label given."""
    import json

    for split, labels in splits.items():
        (root / split).mkdir(parents=True)
        lines = []
        for i, label in enumerate(labels):
            Image.new("L", (8, 8), 10 * i).save(root / split / f"{i}.png")
            lines.append(json.dumps({"file_name": f"{i}.png", "label": label}))
        (root / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_every_split_takes_the_training_splits_label_mapping(tmp_path):
    # Encoded split by split, a test split lacking class 'a' numbered 'b' 0 and 'c' 1 (training: 1 and 2).
    train, test = ["c", "a", "b", "c", "a"], ["c", "b", "b", "c"]
    metadata_folder(tmp_path, {"train": train, "test": test})
    data = load_image_data(str(tmp_path))
    assert data.labels == ["a", "b", "c"]
    assert data.train.features["label"].names == data.eval.features["label"].names == ["a", "b", "c"]
    assert [data.labels[y] for y in data.train["label"]] == train
    assert [data.labels[y] for y in data.eval["label"]] == test
    assert data.eval["image"][0]["bytes"] is None and data.eval["image"][0]["path"].endswith("0.png")  # undecoded


def test_a_held_out_label_the_training_split_lacks_is_refused(tmp_path):
    metadata_folder(tmp_path, {"train": ["a", "b"], "test": ["a", "d", "b"]})
    with pytest.raises(ValueError) as error:
        load_image_data(str(tmp_path))
    assert str(error.value) == (
        f"label_column: {str(tmp_path)!r} split 'test' has labels ['d'] that the training split does not; "
        "allowed: its classes ['a', 'b']."
    )


def test_class_labels_declared_differently_per_split_are_matched_by_name(tmp_path, monkeypatch):
    import datasets

    def split(names: list[str], labels: list[int]) -> datasets.Dataset:
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        images = [{"bytes": None, "path": str(tmp_path / f"{i}.png")} for i in range(len(labels))]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features)

    hub = datasets.DatasetDict({"train": split(["x", "y", "z"], [0, 1, 2]), "test": split(["z", "y"], [0, 0, 1])})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: hub)
    data = load_image_data("org/relabelled")
    assert data.labels == ["x", "y", "z"]
    assert [data.labels[y] for y in data.eval["label"]] == ["z", "z", "y"]


def test_canvas_folder_holds_the_held_out_canvases_the_zoo_is_evaluated_on(tmp_path):
    from sink_models.data import write_canvas_folder

    canvas = Canvas(size=24, digit_size=8, distractors=1)
    folder = write_canvas_folder(tmp_path / "canvas", canvas, splits=("test",))
    expected = canvas_digits(canvas).eval
    loaded = load_image_data(str(folder), eval_split="test", train_split="test")
    assert loaded.labels == [str(d) for d in range(10)] and len(loaded.eval) == len(expected) == 359
    files = sorted(folder.rglob("*.png"), key=lambda path: path.name)  # rows numbered in the split's order
    for i in (0, 17, 358):
        pixels = np.asarray(Image.open(files[i]))
        want = np.asarray(Image.open(io.BytesIO(expected[i]["image"]["bytes"])))
        np.testing.assert_array_equal(pixels, want)
        assert files[i].parent.name == str(expected[i]["label"])
    with pytest.raises(ValueError, match="exists; allowed: a new folder"):
        write_canvas_folder(folder, canvas, splits=("test",))
