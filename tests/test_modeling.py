import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, images, tiny_config
from reference import reference_tokens

from sink_models import SinkViTForImageClassification, SinkViTModel

ALL = sorted(CONFIGS)


def build(name="plain", cls=SinkViTForImageClassification, attn="sdpa", **overrides):
    model = cls(tiny_config(name, **overrides)).eval()
    model.set_attn_implementation(attn)
    return model


@pytest.mark.parametrize("name", ALL)
def test_matches_independent_reference(name):
    model = build(name)
    x = images(model.config)
    with torch.no_grad():
        out = model.sink_vit(x).last_hidden_state
    expected = reference_tokens(model, x)["last_hidden_state"]
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_eager_and_sdpa_agree(name):
    model = build(name)
    x = images(model.config)
    with torch.no_grad():
        sdpa = model(x, output_hidden_states=True)
        model.set_attn_implementation("eager")
        eager = model(x, output_hidden_states=True)
    torch.testing.assert_close(eager.logits, sdpa.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(eager.hidden_states[-1], sdpa.hidden_states[-1], atol=1e-5, rtol=0)


def test_flex_attention_agrees_with_sdpa():
    # One model with every feature: flex compiles its kernel on first use (~30 s on CPU), so test it once.
    model = build("gated-reg", global_pathway_dim=8)
    x = images(model.config)
    with torch.no_grad():
        sdpa = model(x).logits
        try:
            model.set_attn_implementation("flex_attention")
            flex = model(x).logits
        except Exception as error:  # noqa: BLE001 -- flex needs a working compiler toolchain
            pytest.skip(f"flex attention does not run here: {type(error).__name__}: {error}")
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_hidden_states_layout(name):
    model = build(name)
    config = model.config
    x = images(config, batch=2)
    out = model(x, output_hidden_states=True)
    height, width = x.shape[-2:]
    ph, pw = config.patch_size if isinstance(config.patch_size, tuple) else (config.patch_size, config.patch_size)
    tokens = 1 + config.num_register_tokens + (height // ph) * (width // pw)
    assert config.num_prefix_tokens == 1 + config.num_register_tokens
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, tokens, config.hidden_size) for h in out.hidden_states)
    assert out.logits.shape == (2, config.num_labels)


@pytest.mark.parametrize("name", ["plain", "gated", "gated-headwise", "gated-reg"])
def test_attentions_and_gates_equal_reference(name):
    model = build(name, attn="eager")
    x = images(model.config)
    with torch.no_grad():
        out = model(x, output_attentions=True, output_gate_values=True)
    ref = reference_tokens(model, x)
    assert len(out.attentions) == model.config.num_hidden_layers
    for got, want in zip(out.attentions, ref["attentions"], strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    assert len(out.gate_values) == len(ref["gates"])
    for got, want in zip(out.gate_values, ref["gates"], strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
    if model.config.attention_gate == "headwise":
        assert out.gate_values[0].shape[-1] == model.config.num_attention_heads


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_output_attentions_on_any_backend_returns_the_eager_maps(attn, caplog):
    model = build("gated-reg", attn=attn)
    x = images(model.config)
    reference = reference_tokens(model, x)
    logging.Logger.warning_once.cache_clear()
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        first = model(x, output_attentions=True)
        second = model(x, output_attentions=True)
    assert model.config._attn_implementation == attn  # the backend is left as it was
    assert first.attentions is not None and len(first.attentions) == model.config.num_hidden_layers
    for got, again, want in zip(first.attentions, second.attentions, reference["attentions"], strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)
        assert torch.equal(got, again)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        torch.testing.assert_close(first.logits, model(x).logits, atol=0, rtol=0)
    warnings = [r.getMessage() for r in caplog.records if "output_attentions=True" in r.getMessage()]
    assert len(warnings) == (0 if attn == "eager" else 1)  # once per process, not once per call
    assert all(repr(attn) in w for w in warnings)


@pytest.mark.parametrize("name", ALL)
def test_gradient_checkpointing_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    model = build(name).train()
    x = images(model.config)
    labels = torch.arange(3) % model.config.num_labels

    def run():
        model.zero_grad()
        out = model(x, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    logits, grads = run()
    # transformers >= 5.24 renamed gradient_checkpointing_enable to activation_checkpointing_enable.
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    assert all(layer.gradient_checkpointing for layer in model.sink_vit.layers)
    ckpt_logits, ckpt_grads = run()
    torch.testing.assert_close(ckpt_logits, logits, atol=1e-6, rtol=0)
    for n in grads:
        torch.testing.assert_close(ckpt_grads[n], grads[n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_receives_a_gradient(name):
    model = build(name).train()
    x = images(model.config)
    model(x, labels=torch.arange(3) % model.config.num_labels).loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


@pytest.mark.parametrize("name", ALL)
def test_batch_equivalence(name):
    model = build(name)
    x = images(model.config, batch=4)
    with torch.no_grad():
        batched = model(x, output_hidden_states=True)
        single = [model(x[i : i + 1], output_hidden_states=True) for i in range(4)]
    torch.testing.assert_close(torch.cat([s.logits for s in single]), batched.logits, atol=1e-5, rtol=0)
    tokens = torch.cat([s.hidden_states[-1] for s in single])
    torch.testing.assert_close(tokens, batched.hidden_states[-1], atol=1e-5, rtol=0)


def test_loss_is_cross_entropy_of_logits():
    model = build("gated-reg")
    x, labels = images(model.config), torch.tensor([0, 3, 4])
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))


def test_return_dict_false_gives_tuple():
    model = build("gated")
    x = images(model.config)
    with torch.no_grad():
        as_tuple = model(x, return_dict=False)
        as_output = model(x)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_output.logits)


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls+mean"])
def test_pooling_reads_the_documented_tokens(pooling):
    model = build("reg", cls=SinkViTModel, pooling=pooling)
    with torch.no_grad():
        out = model(images(model.config))
    tokens = out.last_hidden_state
    cls_token, patch_mean = tokens[:, 0], tokens[:, 1 + model.config.num_register_tokens :].mean(1)
    expected = {"cls": cls_token, "mean": patch_mean, "cls+mean": torch.cat([cls_token, patch_mean], -1)}[pooling]
    torch.testing.assert_close(out.pooler_output, expected)


def test_no_gate_no_registers_no_layerscale_is_exactly_a_stock_vit():
    from transformers import ViTConfig, ViTModel

    sink = build("plain-bare", cls=SinkViTModel, qkv_bias=True, proj_bias=True)
    assert not any("gate" in n or "register" in n or "global_pathway" in n for n, _ in sink.named_parameters())
    config = sink.config
    vit = ViTModel(
        ViTConfig(
            **{k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")},
            intermediate_size=config.intermediate_size,
            image_size=config.image_size,
            patch_size=config.patch_size,
            layer_norm_eps=config.layer_norm_eps,
        ),
        add_pooling_layer=False,
    ).eval()
    # SinkViT -> ViT names, written out here so that the test does not lean on sink_models.convert.
    renamed = {
        k.replace(".norm1.", ".layernorm_before.").replace(".norm2.", ".layernorm_after."): v
        for k, v in sink.state_dict().items()
    }
    vit.load_state_dict(renamed, strict=True)
    x = images(config)
    with torch.no_grad():
        torch.testing.assert_close(sink(x).last_hidden_state, vit(x).last_hidden_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["plain", "reg", "rect"])
@pytest.mark.parametrize("delta", [-2, 3])
def test_other_image_sizes_with_interpolation(name, delta):
    model = build(name)
    config = model.config
    ph, pw = config.patch_size if isinstance(config.patch_size, tuple) else (config.patch_size,) * 2
    size = ((config.grid_size[0] + delta) * ph, (config.grid_size[1] + delta) * pw)
    x = images(config, size=size)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(x)
    with torch.no_grad():
        out = model.sink_vit(x, interpolate_pos_encoding=True).last_hidden_state
    assert out.shape[1] == config.num_prefix_tokens + (size[0] // ph) * (size[1] // pw)
    torch.testing.assert_close(out.double(), reference_tokens(model, x)["last_hidden_state"], atol=2e-5, rtol=1e-4)


def test_config_default_interpolation_applies_without_keyword():
    model = build("plain", interpolate_pos_encoding=True)
    x = images(model.config, size=(24, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x, interpolate_pos_encoding=True).logits)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 1, 16, 16), "expected 3 channels"),
        ((2, 3, 16, 18), "not a multiple of the patch size"),
        ((3, 16, 16), "4-d tensor"),
        ((2, 3, 20, 20), "does not match the model's 16x16"),
    ],
)
def test_bad_pixel_values_raise_clear_errors(shape, message):
    model = build("plain")
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


@pytest.mark.parametrize("keyword", ["head_mask", "attention_mask", "output_hidden_state"])
def test_unsupported_keywords_are_errors_not_ignored(keyword):
    model = build("plain")
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'"):
        model(images(model.config), **{keyword: True})
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'"):
        model.sink_vit(images(model.config), **{keyword: True})


def test_a_config_changed_after_construction_is_checked_by_the_model():
    config = tiny_config("plain")
    config.attention_gate = "sigmoid"
    with pytest.raises(ValueError, match="attention_gate: got 'sigmoid'"):
        SinkViTModel(config)


def test_missing_pixel_values_is_an_error():
    with pytest.raises(ValueError, match="pixel_values: required"):
        build("plain")()


def test_model_refuses_a_foreign_config():
    from transformers import ViTConfig

    with pytest.raises(TypeError, match="expected a SinkViTConfig"):
        SinkViTModel(ViTConfig())


@pytest.mark.parametrize("name", ["gated", "gated-headwise", "gp"])
def test_bfloat16_forward_close_to_float32(name):
    model = build(name)
    x = images(model.config)
    with torch.no_grad():
        full = model(x).logits
        half = model.to(torch.bfloat16)(x).logits
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.1, rtol=0.1)
