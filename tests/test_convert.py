import pytest
import torch
from conftest import STOCK_SIZES, images, tiny_config
from transformers import (
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from sink_models import SinkViTForImageClassification, SinkViTModel
from sink_models.convert import extend, from_transformers

SIZES = STOCK_SIZES
STOCK = {
    "vit": lambda: ViTModel(ViTConfig(intermediate_size=48, **SIZES)),
    "vit-head": lambda: ViTForImageClassification(ViTConfig(intermediate_size=48, num_labels=5, **SIZES)),
    "dinov2": lambda: Dinov2Model(Dinov2Config(layerscale_value=0.3, **SIZES)),
    "dinov2-head": lambda: Dinov2ForImageClassification(Dinov2Config(num_labels=5, **SIZES)),
    "dinov2-reg": lambda: Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=3, **SIZES)),
    "dinov2-reg-head": lambda: Dinov2WithRegistersForImageClassification(
        Dinov2WithRegistersConfig(num_labels=5, **SIZES)
    ),
}


def stock(name):
    model = STOCK[name]().eval()
    with torch.no_grad():
        # Stock inits leave CLS/registers at zero and LayerScale at a constant: make every weight matter.
        for param_name, param in model.named_parameters():
            if "cls_token" in param_name or "register_tokens" in param_name or "lambda1" in param_name:
                param.normal_(0, 0.5)
    return model


def main_output(outputs):
    return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


@pytest.mark.parametrize("name", STOCK)
@pytest.mark.parametrize("size", [(16, 16), (12, 12), (24, 24), (12, 20)])
def test_converted_model_reproduces_the_stock_model(name, size):
    model = stock(name)
    converted = from_transformers(model)
    head = name.endswith("head")
    assert isinstance(converted, SinkViTForImageClassification if head else SinkViTModel)
    x = images(converted.config, size=size)
    # ViT needs the keyword for other sizes, DINOv2 always interpolates: the converted model follows each.
    keyword = {"interpolate_pos_encoding": True} if name.startswith("vit") and size != (16, 16) else {}
    with torch.no_grad():
        expected, got = main_output(model(x, **keyword)), main_output(converted(x, **keyword))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_conversion_keeps_attention_backend_and_dtype():
    model = ViTModel(ViTConfig(intermediate_size=48, **SIZES), add_pooling_layer=False).to(torch.float64)
    model.set_attn_implementation("eager")
    converted = from_transformers(model)
    assert converted.config._attn_implementation == "eager"
    assert next(converted.parameters()).dtype == torch.float64


def test_dinov2_config_maps_to_the_sink_vit_fields():
    config = from_transformers(stock("dinov2-reg-head")).config
    assert config.pooling == "cls+mean" and config.num_register_tokens == 4
    assert config.interpolate_pos_encoding and config.interpolate_antialias
    assert config.layerscale_init == 1.0 and config.num_labels == 5
    assert config.converted_from == "Dinov2WithRegistersForImageClassification"


def test_unsupported_models_are_refused_with_the_list():
    from transformers import ViTForMaskedImageModeling

    with pytest.raises(ValueError, match="ViTForMaskedImageModeling cannot be converted; supported classes: ViTModel"):
        from_transformers(ViTForMaskedImageModeling(ViTConfig(**SIZES)))
    with pytest.raises(ValueError, match="use_swiglu_ffn"):
        from_transformers(Dinov2Model(Dinov2Config(use_swiglu_ffn=True, **SIZES)))


@pytest.mark.parametrize("name", ["dinov2-head", "vit"])
@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_adding_a_gate_or_pathway_keeps_the_outputs(name, gate):
    converted = from_transformers(stock(name))
    extended = extend(converted, attention_gate=gate, global_pathway_dim=8)
    assert extended.config.attention_gate == gate and extended.config.global_pathway_dim == 8
    x = images(converted.config)
    with torch.no_grad():
        out = extended(x, output_gate_values=True)
        torch.testing.assert_close(main_output(out), main_output(converted(x)), atol=1e-6, rtol=0)
    assert all(torch.equal(g, torch.full_like(g, 0.5)) for g in out.gate_values)


def test_added_gate_and_pathway_learn():
    extended = extend(from_transformers(stock("dinov2-head")), attention_gate="headwise", global_pathway_dim=8)
    extended.train()
    extended(images(extended.config), labels=torch.tensor([0, 1, 2])).loss.backward()
    layer = extended.sink_vit.layers[0]
    assert layer.attention.gate_proj.weight.grad.abs().sum() > 0
    assert layer.global_pathway.out_proj.weight.grad.abs().sum() > 0


def test_adding_registers_keeps_existing_ones():
    converted = from_transformers(stock("dinov2-reg"))
    extended = extend(converted, num_register_tokens=6)
    old, new = converted.embeddings.register_tokens, extended.embeddings.register_tokens
    assert new.shape == (1, 6, 32)
    torch.testing.assert_close(new[:, :3], old)
    assert new[:, 3:].abs().sum() > 0
    out = extended(images(converted.config, batch=2), output_hidden_states=True)
    assert out.last_hidden_state.shape[1] == 1 + 6 + 16


def test_extend_refuses_impossible_changes():
    gated = SinkViTModel(tiny_config("gated-reg"))
    with pytest.raises(ValueError, match="already has a 'elementwise' gate"):
        extend(gated, attention_gate="headwise")
    with pytest.raises(ValueError, match="removing the model's 'elementwise' gate is not supported"):
        extend(gated, attention_gate="none")
    with pytest.raises(ValueError, match="num_register_tokens: got 2; allowed: at least the current 4"):
        extend(gated, num_register_tokens=2)
    with pytest.raises(TypeError, match="use from_transformers first"):
        extend(stock("vit"), attention_gate="headwise")
