"""Dense probes on segmentation datasets (an imagefolder with a mask column, as ADE20K and VOC are published) and on
stock families (issue 15)."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from families import build
from PIL import Image
from transformers import BitImageProcessorPil, CLIPImageProcessor

from sink_models.modeling_sink_vit import SinkViTModel
from sink_models.probes.dense import DenseOptions, dense_probe, majority_labels, reduce_labels
from sink_models.probes.linear import ProbeSettings, linear_probe, patch_features

COLOURS = np.array([[0, 0, 0], [230, 20, 20], [20, 230, 20], [20, 20, 230]], np.uint8)  # raw mask 0..3


def segmentation_folder(root, images: int = 6, size: int = 40):
    """train/ and validation/ splits of `size`-pixel images of coloured rectangles on black (raw mask 0 = background,
    1..3 the colours), VOC-style 255 borders around each rectangle, masks in masks/ named by metadata.jsonl."""
    rng = np.random.RandomState(0)
    for split in ("train", "validation"):
        (root / split / "masks").mkdir(parents=True)
        rows = []
        for i in range(images):
            mask = np.zeros((size, size), np.uint8)
            for value in (1, 2, 3):
                top, left = rng.randint(0, size - 16, 2)
                mask[top : top + 16, left : left + 16] = 255
                mask[top + 1 : top + 15, left + 1 : left + 15] = value
            picture = COLOURS[np.where(mask == 255, 0, mask)] + rng.randint(0, 20, (size, size, 3)).astype(np.uint8)
            Image.fromarray(picture).save(root / split / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
            rows.append({"file_name": f"{i}.png", "mask_file_name": f"masks/{i}.png"})
        (root / split / "metadata.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return root


def test_reduce_labels_ignores_zero_and_shifts_the_rest():
    masks = np.array([[[0, 1, 2], [150, 255, 3]]])
    assert reduce_labels(masks).tolist() == [[[255, 0, 1], [149, 255, 2]]]


def test_majority_labels_match_a_loop_over_patches():
    rng = np.random.RandomState(1)
    masks = rng.choice([0, 1, 2, 255], size=(3, 8, 12), p=[0.3, 0.3, 0.1, 0.3])
    masks[0, :4, :4] = 255  # a patch with nothing labelled
    got = majority_labels(masks, 4)
    for image, row, column in np.ndindex(got.shape):
        block = masks[image, 4 * row : 4 * row + 4, 4 * column : 4 * column + 4].ravel()
        block = block[block != 255]
        expected = 255 if not len(block) else np.bincount(block).argmax()
        assert got[image, row, column] == expected
    assert got[0, 0, 0] == 255


def test_dense_probe_on_an_imagefolder_equals_the_probe_by_hand(tmp_path):
    folder = segmentation_folder(tmp_path / "seg")
    model = build("dinov2")
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    options = DenseOptions(dataset=str(folder), num_labels=3, reduce_labels=True, resolution=32)
    block = dense_probe(model, processor, options)

    def by_hand(split):  # the paper's fixed resize: image bilinear, mask nearest; then no resize nor crop
        images, masks = [], []
        for i in range(6):
            image = Image.open(folder / split / f"{i}.png").convert("RGB")
            images.append(image.resize((32, 32), Image.Resampling.BILINEAR))
            mask = np.asarray(Image.open(folder / split / "masks" / f"{i}.png").resize((32, 32), Image.NEAREST))
            masks.append(mask)
        masks = reduce_labels(np.stack(masks).astype(np.int64))
        pixels = processor(images, return_tensors="pt", do_resize=False, do_center_crop=False)["pixel_values"]
        assert pixels.shape[-2:] == (32, 32)
        return patch_features(model, [pixels]), torch.as_tensor(majority_labels(masks, 8)).long(), masks

    (train_x, train_y, _), (eval_x, eval_y, eval_masks) = by_hand("train"), by_hand("validation")
    expected = linear_probe(
        train_x, train_y, eval_x, eval_y, 3, ProbeSettings(ignore_index=255),
        eval_pixel_labels=torch.as_tensor(eval_masks), background=None,
    )  # fmt: skip
    for key in ("miou", "accuracy", "pixel_miou", "pixel_accuracy"):
        assert block[key] == pytest.approx(getattr(expected, key), rel=1e-6), key
    assert block["foreground_miou"] is None and block["classes"] == ["0", "1", "2"]
    assert block["settings"]["reduce_labels"] and block["settings"]["ignore_index"] == 255
    assert (block["dataset"], block["split"], block["settings"]["resolution"]) == (str(folder), "validation", [32, 32])


@pytest.mark.parametrize("family", ["dinov2", "dinov3", "clip", "clip_dual"])
def test_stock_families_probe_the_colours_of_their_patches(tmp_path, family):
    folder = segmentation_folder(tmp_path / "seg", images=8)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    options = DenseOptions(dataset=str(folder), num_labels=3, reduce_labels=True, resolution=32, layer=0)
    block = dense_probe(build(family), processor, options)
    # Colour is a linear function of a patch's pixels: even a random embedding keeps it, so the probe finds it.
    assert block["accuracy"] > 0.8 and block["miou"] > 0.6, block
    assert block["settings"]["features"] == "block 0's patch tokens, layer-normed"


def test_the_papers_adamw_probe_averages_its_seeds(tmp_path):
    folder = segmentation_folder(tmp_path / "seg", images=4)
    model = SinkViTModel(tiny_config("gated-reg")).eval()
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    probe = ProbeSettings.paper(epochs=3)
    common = {"dataset": str(folder), "num_labels": 3, "reduce_labels": True, "resolution": 32, "probe": probe}
    block = dense_probe(model, processor, DenseOptions(**common, seeds=(42, 43)))
    singles = [dense_probe(model, processor, DenseOptions(**common, seeds=(seed,)))["miou"] for seed in (42, 43)]
    assert block["per_seed_miou"] == pytest.approx(singles) and block["miou"] == pytest.approx(np.mean(singles))
    assert block["settings"]["optimizer"] == "adamw" and block["settings"]["seeds"] == [42, 43]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_labels": None}, "dense_probe_num_labels: got None; a segmentation dataset needs"),
        ({"num_labels": 2}, "the label sets do not match"),
        ({"mask_column": "label"}, "has no column 'label'; its columns are \\['image', 'mask'\\]"),
        ({"resolution": 36}, "allowed: a multiple of the patch size"),
        ({"eval_split": "test"}, "has no split 'test'; it has \\['train', 'validation'\\]"),
        ({"dataset": "/nonexistent/folder"}, "could not be loaded"),
        ({"seeds": ()}, "dense_probe_seeds: got none"),
    ],
)
def test_bad_segmentation_input_is_one_line(tmp_path, change, match):
    folder = segmentation_folder(tmp_path / "seg", images=2)
    options = {"dataset": str(folder), "num_labels": 3, "reduce_labels": True, "resolution": 32} | change
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with pytest.raises(ValueError, match=match) as error:
        dense_probe(build("dinov2"), processor, DenseOptions(**options))
    assert "\n" not in str(error.value)


def test_a_classification_folder_and_colour_masks_are_refused(tmp_path):
    folder = segmentation_folder(tmp_path / "seg", images=2)
    for split in ("train", "validation"):  # masks saved as RGB: not class indices
        for path in (folder / split / "masks").iterdir():
            Image.open(path).convert("RGB").save(path)
    processor = BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    options = DenseOptions(dataset=str(folder), num_labels=3, resolution=32)
    with pytest.raises(ValueError, match="holds 3-channel images; allowed: single-channel class-index masks"):
        dense_probe(build("dinov2"), processor, options)
    plain = tmp_path / "classes" / "train" / "a"
    plain.mkdir(parents=True)
    Image.fromarray(COLOURS[:1].repeat(32 * 32, 0).reshape(32, 32, 3)).save(plain / "0.png")
    options = DenseOptions(dataset=str(tmp_path / "classes"), num_labels=3, eval_split="train")
    with pytest.raises(ValueError, match="a dataset without masks cannot be probed densely"):
        dense_probe(build("dinov2"), processor, options)
