"""Content or default sinks on canvas-digits: ink attribution against the generator's placements, the blank and
cluttered held-out sets, and the sensitivity grid in the evaluation's results."""

import importlib.util
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from sink_models import SinkViTForImageClassification
from sink_models.data import INK, Canvas, _digit_split, canvas_dense, canvas_digits, ink_patches
from sink_models.diagnostics import SinkReport, diagnose
from sink_models.evaluation.content import CONTENT_SETS, content_options, ink_block

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("eval_run", ROOT / "eval" / "run.py")
eval_run = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(eval_run)
MODEL = ROOT / "zoo" / "vit-reg"  # 64 x 64 canvases, 8 x 8 patches, CLS + 4 registers


def placed_ink(canvas: Canvas, count: int) -> np.ndarray:
    """(count, 8, 8) ink patches of the first held-out canvases, from the generator's draws replayed by hand: the
    digit's top and left are the first two draws of the image's generator (no distractors), its ink the upscaled
    pixels above INK of the range."""
    test_pixels = _digit_split(0.2, 0)[1][0]
    patches = np.zeros((count, canvas.size // 8, canvas.size // 8), dtype=bool)
    for i in range(count):
        rng = random.Random(f"{canvas.seed}-test-{i}")
        top, left = rng.randint(0, canvas.size - canvas.digit_size), rng.randint(0, canvas.size - canvas.digit_size)
        digit = Image.fromarray(test_pixels[i]).resize((canvas.digit_size,) * 2, Image.Resampling.BILINEAR)
        for y, x in zip(*np.nonzero(np.asarray(digit, np.float32) > INK * 255), strict=True):
            patches[i, (top + y) // 8, (left + x) // 8] = True
    return patches


def test_ink_patches_are_where_the_generator_placed_the_digit():
    canvas = Canvas()
    _, maps, _ = canvas_dense(canvas, "eval", limit=40)
    expected = placed_ink(canvas, 40)
    assert (ink_patches(maps, 8) == expected).all()
    assert 3 <= expected.sum((1, 2)).mean() <= 9  # a 16 x 16 digit touches 4 to 9 of the 64 patches


def test_the_ink_share_counts_each_patch_event_by_its_sink_patch():
    canvas, prefix, images = Canvas(), 5, 6
    ink = placed_ink(canvas, images).reshape(images, -1)
    # One patch event on every patch of every image, classes in turn; a CLS and a register event that must not count.
    events = [
        {"image": i, "sink": prefix + p, "token_type": "patch", "class": ("nop", "broadcast", "other")[p % 3]}
        for i in range(images)
        for p in range(64)
    ] + [{"image": 0, "sink": 0, "token_type": "cls", "class": "nop"}, {"image": 1, "sink": 2, "token_type": "register",
                                                                          "class": "broadcast"}]  # fmt: skip
    report = SinkReport({"images": images}, [], [], events, {}, {"num_prefix_tokens": prefix})
    block = ink_block(report, {}, (8, 8))
    assert block["patch_events"] == images * 64 and block["on_ink"] == pytest.approx(ink.mean())
    assert block["chance"] == pytest.approx(ink.mean())
    assert block["ink_patches_per_image"] == pytest.approx(ink.sum(1).mean())
    for k, name in enumerate(("nop", "broadcast", "other")):
        chosen = ink[:, [p for p in range(64) if p % 3 == k]]
        assert block["by_class"][name] == {"patch_events": chosen.size, "on_ink": pytest.approx(chosen.mean())}
    empty = ink_block(SinkReport({"images": 2}, [], [], [], {}, {"num_prefix_tokens": 1}), {}, (8, 8))
    assert (empty["patch_events"], empty["on_ink"]) == (0, None)


def test_a_blank_canvas_is_the_same_canvas_without_its_digit():
    canvas, blank = canvas_dense(Canvas(), "eval", limit=12), canvas_dense(Canvas(blank=True), "eval", limit=12)
    assert blank[1].max() == 0 and (blank[2] == canvas[2]).all()  # no ink labelled; the labels are kept
    test_pixels = _digit_split(0.2, 0)[1][0]
    for i in range(12):
        rng = random.Random(f"0-test-{i}")
        top, left = rng.randint(0, 48), rng.randint(0, 48)
        outside = np.ones((64, 64), dtype=bool)
        outside[top : top + 16, left : left + 16] = False
        assert (blank[0][i][outside] == canvas[0][i][outside]).all()  # the same noise everywhere else
        assert test_pixels[i].max() > 0 and (blank[0][i] != canvas[0][i]).any()
    rows = canvas_digits(Canvas(blank=True)).eval
    first = np.asarray(Image.open(io.BytesIO(rows[0]["image"]["bytes"])))
    assert (first == blank[0][0]).all()  # the evaluation's images are the same canvases


def test_a_canvas_option_blank_must_be_a_bool():
    from sink_models.errors import InputError

    with pytest.raises(InputError, match=r"^dataset_options.blank: got 1; allowed: true or false.$"):
        Canvas(blank=1)


def test_the_evaluation_writes_ink_content_sets_and_the_grid(tmp_path, capsys):
    """`--sensitivity --content_sets` on a canvas model: each block equals the diagnostics run by hand on the same
    canvases, and the ink share equals the count against the generator's placements."""
    argv = ["--model", str(MODEL), "--max_images", "24", "--sensitivity", "--content_sets"]
    argv += ["--results_dir", str(tmp_path / "results"), "--cards_dir", str(tmp_path / "cards")]
    assert eval_run.cli(argv) == 0, capsys.readouterr()
    result = json.loads((tmp_path / "results" / "vit-reg.json").read_text())

    model = SinkViTForImageClassification.from_pretrained(MODEL).eval()
    processor = AutoImageProcessor.from_pretrained(MODEL)
    options = json.loads(json.loads((MODEL / "training_args.json").read_text())["data"]["dataset_options"])

    def by_hand(canvas: Canvas):
        images = canvas_dense(canvas, "eval", limit=24)[0]
        pixels = processor([Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
        return diagnose(model, [pixels])

    report = by_hand(Canvas(**options))
    ink = placed_ink(Canvas(**options), 24).reshape(24, -1)
    patch = [e for e in report.events if e["token_type"] == "patch"]
    assert result["ink"]["patch_events"] == len(patch) > 0
    assert result["ink"]["on_ink"] == pytest.approx(np.mean([ink[e["image"], e["sink"] - 5] for e in patch]))
    cells = result["sinks"]["sensitivity"]["cells"]
    default = next(c for c in cells if (c["event"], c["routed"], c["queries"], c["blocks"]) == (0.9, 0.5, "all", "all"))
    assert default["sinks_per_image"] == pytest.approx(report.summary["sinks_per_image"])
    assert sorted(result["content_sets"]) == sorted(CONTENT_SETS)
    assert content_options("blank", options) == options | {"blank": True}
    assert content_options("cluttered", options) == options | {"blank": False, "distractors": 1, "distractor_size": 16}
    for name in CONTENT_SETS:
        block = result["content_sets"][name]
        assert block["options"] == content_options(name, options)
        expected = by_hand(Canvas(**block["options"])).summary
        for key in ("sinks_per_image", "nop_per_image", "broadcast_per_image", "sink_share", "excluding_first_layer"):
            assert block["sinks"][key] == pytest.approx(expected[key]), (name, key)
        assert len(block["sinks"]["sensitivity"]["cells"]) == 36
    assert result["content_sets"]["blank"]["ink"]["chance"] == 0.0  # nothing on a blank canvas is ink
    torch.testing.assert_close(torch.tensor(result["ink"]["chance"]), torch.tensor(float(ink.mean())))


def test_content_sets_need_canvases(tmp_path, capsys):
    argv = ["--model", str(MODEL), "--dataset", "digits", "--content_sets", "--max_images", "4"]
    argv += ["--results_dir", str(tmp_path / "results"), "--cards_dir", str(tmp_path / "cards")]
    assert eval_run.cli(argv) == 2
    assert capsys.readouterr().err == (
        "error: content_sets: 'digits' has no content-controlled sets; allowed: 'canvas-digits' (its held-out "
        "canvases without their digit, and with a second one).\n"
    )
    assert not (tmp_path / "results").exists()


def test_ink_follows_the_processor_when_it_resizes_the_canvas():
    """A 32 x 32 canvas seen by a 64 x 64 model (8 x 8 patches): each model patch is a 4 x 4 canvas patch."""
    options = {"size": 32, "digit_size": 8}
    events = [
        {"image": i, "sink": 1 + p, "token_type": "patch", "class": "broadcast"} for i in range(5) for p in range(64)
    ]
    report = SinkReport({"images": 5}, [], [], events, {}, {"num_prefix_tokens": 1}, {"grid": [8, 8]})
    block = ink_block(report, options, (8, 8))
    ink = ink_patches(canvas_dense(Canvas(**options), "eval", limit=5)[1], 4)
    assert block["chance"] == pytest.approx(ink.mean()) and block["on_ink"] == pytest.approx(ink.mean())
    assert block["ink_patches_per_image"] == pytest.approx(ink.sum((1, 2)).mean())
