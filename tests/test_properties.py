import tempfile

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sink_models import SinkViTConfig, SinkViTForImageClassification
from sink_models.checkpoint import save_checkpoint


@st.composite
def configs(draw):
    heads = draw(st.integers(1, 3))
    patch = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    grid = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return SinkViTConfig(
        image_size=(patch[0] * grid[0], patch[1] * grid[1]),
        patch_size=patch,
        num_channels=draw(st.integers(1, 3)),
        hidden_size=heads * draw(st.sampled_from([2, 4, 8])),
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 2)),
        intermediate_size=draw(st.integers(0, 24)),
        qkv_bias=draw(st.booleans()),
        proj_bias=draw(st.booleans()),
        num_register_tokens=draw(st.integers(0, 3)),
        attention_gate=draw(st.sampled_from(["none", "headwise", "elementwise"])),
        layerscale_init=draw(st.one_of(st.none(), st.floats(1e-4, 2.0))),
        global_pathway_dim=draw(st.sampled_from([0, 1, 3])),
        pooling=draw(st.sampled_from(["cls", "mean", "cls+mean"])),
        num_labels=draw(st.integers(1, 4)),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), batch=st.integers(1, 3))
def test_any_valid_config_builds_runs_and_round_trips(config, batch):
    model = SinkViTForImageClassification(config).eval()
    height, width = config.image_size
    x = torch.randn(batch, config.num_channels, height, width)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    tokens = config.num_prefix_tokens + config.grid_size[0] * config.grid_size[1]
    assert out.logits.shape == (batch, config.num_labels)
    assert out.hidden_states[-1].shape == (batch, tokens, config.hidden_size)
    assert torch.isfinite(out.logits).all()
    with tempfile.TemporaryDirectory() as folder:
        loaded = SinkViTForImageClassification.from_pretrained(save_checkpoint(model, f"{folder}/m")).eval()
        with torch.no_grad():
            # Not bit-exact: loaded weights may sit at other memory alignments, which changes CPU kernel rounding.
            torch.testing.assert_close(loaded(x).logits, out.logits, atol=1e-6, rtol=1e-6)
