"""Dense labels of the canvas task and linear probes on frozen patch tokens (issue 15)."""

import io
import random

import numpy as np
import pytest
import torch
from conftest import tiny_config
from families import build
from PIL import Image

from sink_models.data import INK, Canvas, canvas_dense, canvas_digits, patch_labels
from sink_models.modeling_sink_vit import SinkViTForImageClassification, SinkViTModel
from sink_models.probes.linear import ProbeSettings, confusion, layer_features, linear_probe, patch_features, scores


@pytest.mark.parametrize("options", [{}, {"distractors": 3, "noise": 0.3}])
def test_render_with_labels_draws_the_same_canvas_as_render(options):
    canvas, pool = Canvas(**options), np.random.RandomState(0).randint(0, 256, (5, 8, 8)).astype(np.uint8)
    for seed in range(5):
        image, label_map = canvas.render_with_labels(pool[0], random.Random(seed), pool, 7, np.arange(5))
        assert np.array_equal(image, canvas.render(pool[0], random.Random(seed), pool))
        assert label_map.shape == image.shape and 8 in np.unique(label_map)  # 1 + class 7: the labelled digit shows


def test_the_digit_pixels_carry_its_class_and_the_rest_is_background():
    digit = np.zeros((8, 8), np.uint8)
    digit[2:6, 3:5] = 255
    canvas = Canvas(size=40, digit_size=16, noise=0.0)
    image, label_map = canvas.render_with_labels(digit, random.Random(3), digit[None], 4)
    assert set(np.unique(label_map)) == {0, 5}
    assert np.array_equal(label_map == 5, image > INK * 255)  # without noise: exactly the upscaled ink


def test_distractors_carry_their_own_class_only_when_the_pool_is_labelled():
    digit = np.full((8, 8), 255, np.uint8)
    canvas = Canvas(size=32, digit_size=8, distractors=2, distractor_size=8, noise=0.0)
    _, unnamed = canvas.render_with_labels(digit, random.Random(1), digit[None], 2)
    _, named = canvas.render_with_labels(digit, random.Random(1), digit[None], 2, np.array([6]))
    assert set(np.unique(unnamed)) == {0, 3} and set(np.unique(named)) == {0, 3, 7}


def test_patch_labels_take_the_class_covering_most_of_the_patch():
    label_map = np.zeros((4, 6), np.uint8)
    label_map[0:2, 0:2] = 3  # a whole patch
    label_map[0, 2:4] = 5  # half of a patch
    label_map[2, 4] = 2  # a quarter
    label_map[3, 0:2], label_map[2, 0] = 1, 4  # 2 of one class, 1 of another
    assert patch_labels(label_map, 2).tolist() == [[3, 5, 0], [1, 0, 0]]
    assert patch_labels(label_map, 2, min_share=0.25).tolist() == [[3, 5, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        patch_labels(label_map, 4)


def test_canvas_dense_gives_the_held_out_canvases_of_canvas_digits():
    canvas = Canvas(distractors=1)
    images, maps, labels = canvas_dense(canvas, "eval", limit=4)
    data = canvas_digits(canvas)
    held_out = [np.asarray(Image.open(io.BytesIO(row["bytes"]))) for row in data.eval[:4]["image"]]
    assert np.array_equal(images, np.stack(held_out)) and labels.tolist() == data.eval[:4]["label"]
    assert all(1 + y in np.unique(m) for y, m in zip(labels, maps, strict=True))
    again = canvas_dense(canvas, "train", limit=3)
    assert np.array_equal(again[1], canvas_dense(canvas, "train", limit=3)[1])  # deterministic
    with pytest.raises(ValueError, match="allowed: 'train', 'eval'"):
        canvas_dense(canvas, "test")


def _decodable(seed: int, images: int = 32, grid: int = 4, classes: int = 4, channels: int = 16, noise: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (images, grid, grid), generator=generator)
    means = 3 * torch.randn(classes, channels, generator=torch.Generator().manual_seed(100))  # shared by the splits
    features = means[labels.reshape(images, -1)] + noise * torch.randn(
        images, grid * grid, channels, generator=generator
    )
    return features, labels


def test_the_probe_decodes_a_linearly_decodable_label_and_not_a_random_one():
    (train_x, train_y), (eval_x, eval_y) = _decodable(0), _decodable(1)
    assert linear_probe(train_x, train_y, eval_x, eval_y, 4).miou > 0.97
    shuffled = train_y.flatten()[torch.randperm(train_y.numel(), generator=torch.Generator().manual_seed(0))]
    chance = linear_probe(train_x, shuffled.reshape(train_y.shape), eval_x, eval_y, 4)
    assert chance.accuracy < 0.45  # chance 0.25 (over-fitting 512 patches leaves a little above it)


def test_lbfgs_reaches_the_regularised_optimum_of_an_independent_solver():
    from sklearn.linear_model import LogisticRegression

    (train_x, train_y), (eval_x, eval_y) = _decodable(0, noise=4.0), _decodable(1, noise=4.0)
    settings = ProbeSettings(weight_decay=1e-2)
    result = linear_probe(train_x, train_y, eval_x, eval_y, 4, settings)
    x = train_x.reshape(-1, 16).double()
    mean, std = x.mean(0), x.std(0)
    # mean cross-entropy + wd / 2 |W|^2  ==  (sum cross-entropy + n wd / 2 |W|^2) / n: sklearn's C = 1 / (n wd)
    reference = LogisticRegression(C=1 / (len(x) * settings.weight_decay), tol=1e-10, max_iter=10_000)
    reference.fit(((x - mean) / std).numpy(), train_y.reshape(-1).numpy())
    predicted = reference.predict(((eval_x.reshape(-1, 16).double() - mean) / std).numpy())
    expected = scores(confusion(eval_y, torch.as_tensor(predicted), 4))
    assert result.miou == pytest.approx(expected[0], abs=2e-3) and result.accuracy == pytest.approx(
        expected[2], abs=2e-3
    )
    assert 0.3 < result.accuracy < 0.99  # noisy enough that the regularisation decides some patches


def test_ignored_patches_are_neither_trained_on_nor_scored():
    (train_x, train_y), (eval_x, eval_y) = _decodable(0), _decodable(1)
    settings = ProbeSettings(ignore_index=255)
    wrong = train_y.clone()
    wrong[:, 0] = (wrong[:, 0] + 1) % 4  # a quarter of the training patches mislabelled ...
    masked = wrong.clone()
    masked[:, 0] = 255  # ... and then ignored: the probe is the clean one's on the other patches
    eval_masked = eval_y.clone()
    eval_masked[:, :, 0] = 255
    result = linear_probe(train_x, masked, eval_x, eval_masked, 4, settings)
    clean = linear_probe(train_x[:, 4:], train_y[:, 1:], eval_x, eval_y, 4)  # rows 1..3 of each 4x4 grid
    assert result.accuracy == 1 and clean.accuracy == 1
    pixels = eval_masked.repeat_interleave(2, 1).repeat_interleave(2, 2)
    scored = linear_probe(train_x, masked, eval_x, eval_masked, 4, settings, eval_pixel_labels=pixels)
    assert scored.pixel_iou is not None and 255 not in scored.pixel_iou
    with pytest.raises(ValueError, match=r"outside the label set \[0, 4\) or the ignored 255"):
        linear_probe(train_x, masked + 1, eval_x, eval_y, 4, settings)
    with pytest.raises(ValueError, match="every training patch is ignored"):
        linear_probe(train_x, torch.full_like(train_y, 255), eval_x, eval_y, 4, settings)


def test_the_papers_adamw_probe_trains_on_patches_or_on_upsampled_pixels_and_its_seed_matters():
    (train_x, train_y), (eval_x, eval_y) = _decodable(0), _decodable(1)
    paper = ProbeSettings.paper(epochs=30, seed=42, ignore_index=None)
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.batch_size, paper.standardize) == (
        "adamw",
        5e-3,
        1e-2,
        32,
        False,
    )
    small = ProbeSettings("adamw", 1e-2, epochs=30, lr=5e-2, batch_size=4, warmup=10, seed=42)
    result = linear_probe(train_x, train_y, eval_x, eval_y, 4, small)
    assert result.miou > 0.95 and result == linear_probe(train_x, train_y, eval_x, eval_y, 4, small)
    noisy = _decodable(0, noise=4.0), _decodable(1, noise=4.0)
    runs = [
        linear_probe(*noisy[0], *noisy[1], 4, ProbeSettings("adamw", 1e-2, epochs=2, lr=5e-2, batch_size=4, seed=seed))
        for seed in (42, 43)
    ]
    assert runs[0].iou != runs[1].iou  # the minibatch order shows on a noisy label after two epochs
    pixels = train_y.repeat_interleave(4, 1).repeat_interleave(4, 2)
    on_pixels = linear_probe(train_x, train_y, eval_x, eval_y, 4, small, train_pixel_labels=pixels)
    assert on_pixels.miou > 0.95
    with pytest.raises(ValueError, match="only the 'adamw' probe trains on pixels"):
        linear_probe(train_x, train_y, eval_x, eval_y, 4, train_pixel_labels=pixels)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"optimizer": "sgd"}, "allowed: 'lbfgs', 'adamw'"),
        ({"epochs": 0}, "epochs: got 0; allowed: a positive integer"),
        ({"weight_decay": -1.0}, "allowed: >= 0 and > 0"),
    ],
)
def test_bad_probe_settings_are_one_line(options, match):
    with pytest.raises(ValueError, match=match):
        ProbeSettings(**options)


def test_without_a_background_class_foreground_miou_is_none():
    (train_x, train_y), (eval_x, eval_y) = _decodable(0), _decodable(1)
    result = linear_probe(train_x, train_y, eval_x, eval_y, 4, background=None)
    assert result.foreground_miou is None and result.miou == linear_probe(train_x, train_y, eval_x, eval_y, 4).miou


def test_miou_matches_an_independent_confusion_matrix():
    rng = np.random.RandomState(0)
    labels, predictions = rng.randint(0, 5, 1000), rng.randint(0, 4, 1000)  # class 4 never predicted
    matrix = np.zeros((6, 6))
    np.add.at(matrix, (labels, predictions), 1)
    iou = [matrix[c, c] / (matrix[c].sum() + matrix[:, c].sum() - matrix[c, c]) for c in range(5)]  # 5: absent
    miou, foreground, accuracy, per_class = scores(confusion(torch.tensor(labels), torch.tensor(predictions), 6))
    assert miou == pytest.approx(np.mean(iou)) and foreground == pytest.approx(np.mean(iou[1:]))
    assert accuracy == pytest.approx((labels == predictions).mean()) and sorted(per_class) == [0, 1, 2, 3, 4]


def test_pixel_scores_upsample_the_patch_logits():
    (train_x, train_y), (eval_x, eval_y) = _decodable(0), _decodable(1)
    pixels = eval_y.repeat_interleave(8, 1).repeat_interleave(8, 2)
    result = linear_probe(train_x, train_y, eval_x, eval_y, 4, eval_pixel_labels=pixels)
    # Exact on patches; bilinear upsampling blurs the borders between patches of different classes (every patch here).
    assert result.miou == 1 and result.pixel_miou > 0.8 and 0.85 < result.pixel_accuracy < 1


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "eval_labels": a["eval_labels"][:, :2]}, "rows x columns = 16 patches"),
        (lambda a: {**a, "train_labels": a["train_labels"] + 4}, "label sets do not match"),
        (lambda a: {**a, "eval_features": a["eval_features"][..., :3]}, "3 channels"),
        (lambda a: {**a, "train_features": a["train_features"][0]}, r"expected \(images, patches, channels\)"),
    ],
)
def test_bad_probe_input_is_one_line(change, match):
    (train_x, train_y), (eval_x, eval_y) = _decodable(0, 4), _decodable(1, 4)
    args = {"train_features": train_x, "train_labels": train_y, "eval_features": eval_x, "eval_labels": eval_y}
    with pytest.raises(ValueError, match=match) as error:
        linear_probe(**change(args), classes=4)
    assert "\n" not in str(error.value)


def test_patch_features_of_sink_vit_are_its_patch_tokens():
    config = tiny_config("gated-reg")
    model, head = SinkViTModel(config).eval(), SinkViTForImageClassification(config).eval()
    images = torch.randn(5, config.num_channels, config.image_size, config.image_size)
    features = patch_features(model, images.split(2))
    with torch.no_grad():
        expected = model(images).last_hidden_state[:, config.num_prefix_tokens :]
        blocks = model(images, output_hidden_states=True).hidden_states
    torch.testing.assert_close(features, expected)
    assert patch_features(head, [images]).shape == expected.shape  # a classifier's base tokens
    block = blocks[1][:, config.num_prefix_tokens :]
    torch.testing.assert_close(
        patch_features(model, [images], layer=0), torch.nn.functional.layer_norm(block, (config.hidden_size,))
    )


def test_layer_features_read_several_layers_in_one_pass():
    model = SinkViTModel(tiny_config("reg")).eval()
    images = torch.randn(3, 3, model.config.image_size, model.config.image_size)
    calls = []
    model.embeddings.register_forward_hook(lambda *args: calls.append(1))
    together = layer_features(model, [images], (None, 0, -1))
    assert len(calls) == 1 and sorted(together, key=str) == [-1, 0, None]
    for layer, features in together.items():
        torch.testing.assert_close(features, patch_features(model, [images], layer=layer))


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_patch_features_of_stock_families(family):
    model, images = build(family), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images).last_hidden_state[:, 1 + (4 if family == "dinov3" else 0) :]
    torch.testing.assert_close(patch_features(model, [images]), expected)
    assert patch_features(model, [images], layer=-1).shape == (2, 16, 32)


def test_models_without_patch_tokens_and_bad_layers_are_one_line():
    with pytest.raises(ValueError, match="not supported by the diagnostics") as error:
        patch_features(torch.nn.Linear(3, 3), [torch.randn(1, 3)])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"allowed: None \(the final output\) or a block index"):
        patch_features(build("dinov2"), [torch.randn(1, 3, 32, 32)], layer=2)


def test_features_at_another_resolution_interpolate_the_position_embeddings():
    model = SinkViTModel(tiny_config("plain")).eval()
    size = 2 * model.config.image_size
    images = torch.randn(2, model.config.num_channels, size, size)
    with torch.no_grad():
        expected = model(images, interpolate_pos_encoding=True).last_hidden_state[:, model.config.num_prefix_tokens :]
    torch.testing.assert_close(patch_features(model, [images]), expected)


def test_the_lbfgs_loss_is_torchs_cross_entropy_with_its_gradient():
    from sink_models.probes.linear import _cross_entropy

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (300,), generator=generator)
    head = torch.nn.Linear(8, 5, dtype=torch.float64)
    ours = _cross_entropy(head, x.t().contiguous(), y)
    (grad,) = torch.autograd.grad(ours, head.weight)
    reference = torch.nn.functional.cross_entropy(head(x), y)
    (want,) = torch.autograd.grad(reference, head.weight)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)
