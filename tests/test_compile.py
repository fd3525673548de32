"""torch.compile: every SinkViT variant compiles as one graph (no graph break) and computes what it computes
uncompiled; a compiled training run is the uncompiled one."""

import pytest
import torch
from conftest import CONFIGS, images, tiny_config
from safetensors.torch import load_file
from test_training import arguments

from sink_models import SinkViTForImageClassification
from sink_models.training import train


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variant_compiles_as_one_graph(name):
    # The eager backend traces with dynamo as any backend does (fullgraph: a graph break raises) without the
    # minutes of code generation per variant that inductor needs on a CPU.
    torch._dynamo.reset()
    model = SinkViTForImageClassification(tiny_config(name)).eval()
    x = images(model.config, batch=2)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values=x).logits, model(pixel_values=x).logits, rtol=0, atol=0)


def test_a_compiled_training_step_has_the_gradients_of_the_uncompiled_one():
    torch._dynamo.reset()
    model = SinkViTForImageClassification(tiny_config("gated-reg")).train()
    x, y = images(model.config, batch=4), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    model(pixel_values=x, labels=y).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.manual_seed(0)  # stochastic depth and dropout draw the same numbers
    compiled(pixel_values=x, labels=y).loss.backward()
    for name, parameter in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_torch_compile_in_training_gives_the_uncompiled_run(tmp_path):
    torch._dynamo.reset()
    train(*arguments(tmp_path / "plain", max_steps=3))
    train(*arguments(tmp_path / "compiled", max_steps=3, torch_compile=True, torch_compile_backend="eager"))
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("plain", "compiled"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)
