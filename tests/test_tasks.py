import pytest
import torch
from reference import reference_tokens

from sink_models.tasks import SinkTask, TokenRegressor
from sink_models.training import DataArguments, ModelArguments, TrainArguments, train


@pytest.mark.parametrize("kind", ["nop", "broadcast"])
def test_fixed_directions(kind):
    task = SinkTask(kind, dim=8, length=5, seed=3)
    assert task.direction.norm().item() == pytest.approx(1.0)
    assert task.direction.sum().item() == pytest.approx(0.0, abs=1e-6)  # orthogonal to the all-ones vector
    torch.testing.assert_close(task.rotation @ task.rotation.T, torch.eye(8), atol=1e-5, rtol=0)
    again = SinkTask(kind, dim=8, length=5, seed=3)
    assert torch.equal(again.direction, task.direction) and torch.equal(again.rotation, task.rotation)


def test_nop_targets_follow_the_definition():
    task = SinkTask("nop", dim=6, length=7, seed=1)
    x = torch.randn(4, 7, 6)
    y = task.targets(x)
    for b in range(4):
        for i in range(7):
            active = sum(float(x[b, i, c]) * float(task.direction[c]) for c in range(6)) > 0
            assert torch.equal(y[b, i], torch.zeros(6) if active else x[b, i])


def test_broadcast_targets_follow_the_definition():
    task = SinkTask("broadcast", dim=6, length=7, seed=2, alpha=0.7)
    x = torch.randn(3, 7, 6)
    y = task.targets(x)
    for b in range(3):
        scores = [float(x[b, j] @ task.direction) for j in range(7)]
        chosen = x[b, scores.index(max(scores))]
        for i in range(7):
            torch.testing.assert_close(y[b, i], x[b, i] + 0.7 * chosen @ task.rotation)


def test_batches_are_reproducible_and_laid_out_as_tokens():
    task = SinkTask("nop", dim=4, length=6, seed=0)
    first, again = task.batch(5, 3), task.batch(5, 3)
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    assert not torch.equal(first["pixel_values"], task.batch(6, 3)["pixel_values"])
    assert not torch.equal(first["pixel_values"], task.batch(5, 3, process=1)["pixel_values"])
    assert first["pixel_values"].shape == (3, 4, 1, 6)
    tokens = first["pixel_values"][:, :, 0, :].transpose(1, 2)  # token i of image b is x_i
    torch.testing.assert_close(first["targets"], task.targets(tokens))


def test_token_regressor_is_the_paper_toy_on_the_residual_stream():
    task = SinkTask("nop", dim=8, length=5)
    model = TokenRegressor(task.model_config(num_register_tokens=2), learn_positions=False).eval()
    batch = task.batch(0, 2)
    out = model(**batch)
    assert out["predictions"].shape == (2, 5, 8)
    tokens = batch["pixel_values"][:, :, 0, :].transpose(1, 2)
    embedded = model.sink_vit(batch["pixel_values"], output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(embedded[:, 3:], tokens)  # the residual stream starts as the tokens x_i themselves
    expected = reference_tokens(model.sink_vit, batch["pixel_values"])["residual"][:, 3:].float()  # O = x + W_O A V
    torch.testing.assert_close(out["predictions"], expected)
    torch.testing.assert_close(out["loss"], torch.nn.functional.mse_loss(expected, batch["targets"]))
    assert model.sink_vit.layers[0].mlp is None  # the NOP toy is attention only
    embeddings = model.sink_vit.embeddings
    assert not embeddings.patch_embeddings.projection.weight.requires_grad
    assert not embeddings.position_embeddings.requires_grad
    assert TokenRegressor(task.model_config()).sink_vit.embeddings.position_embeddings.requires_grad
    with pytest.raises(ValueError, match="hidden_size: got 16; the toy's residual stream is its tokens"):
        TokenRegressor(task.model_config(hidden_size=16))


def test_a_short_nop_run_trains_the_loss_down(tmp_path):
    summary = train(
        ModelArguments(variant="plain"),
        DataArguments(dataset="nop", task_dim=16, task_length=8),
        TrainArguments(
            output_dir=str(tmp_path), max_steps=200, learning_rate=1e-2, warmup_steps=20,
            weight_decay=1e-4, per_device_batch_size=128, logging_steps=10,
        ),
    )  # fmt: skip
    first_logged = float((tmp_path / "metrics.jsonl").read_text().splitlines()[0].split('"loss": ')[1].split(",")[0])
    # Predicting x (or 0) everywhere scores 0.5; learning the split goes well below.
    assert summary["evaluation"]["mse"] < 0.3 < first_logged
    assert (tmp_path / "model" / "model.safetensors").is_file()
