import json
import re

import pytest
from transformers import ViTConfig

from sink_models import SIZES, VARIANTS, SinkViTConfig, SinkViTForImageClassification, preset_config


@pytest.mark.parametrize(
    ("fields", "field", "allowed"),
    [
        ({"hidden_size": 100, "num_attention_heads": 3}, "hidden_size", "a multiple of num_attention_heads"),
        ({"attention_gate": "sigmoid"}, "attention_gate", "one of ('none', 'headwise', 'elementwise')"),
        ({"num_register_tokens": -1}, "num_register_tokens", "an int >= 0"),
        ({"num_register_tokens": 1.5}, "num_register_tokens", "an int >= 0"),
        ({"patch_size": 32, "image_size": 16}, "patch_size", "at most the image size"),
        ({"patch_size": 5, "image_size": 16}, "patch_size", "a divisor of the image size"),
        ({"image_size": (16,)}, "image_size", "a positive int or a (height, width) pair"),
        ({"image_size": 0}, "image_size", "a positive int"),
        ({"pooling": "max"}, "pooling", "one of ('cls', 'mean', 'cls+mean')"),
        ({"layerscale_init": 0.0}, "layerscale_init", "None (no LayerScale) or a positive number"),
        ({"global_pathway_dim": -4}, "global_pathway_dim", "an int >= 0"),
        ({"hidden_act": "swish2"}, "hidden_act", "one of"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob", "a probability in [0, 1)"),
        ({"num_hidden_layers": 0}, "num_hidden_layers", "a positive int"),
        ({"intermediate_size": -1}, "intermediate_size", "an int >= 0"),
        ({"qkv_bias": "yes"}, "qkv_bias", "True or False"),
        ({"layer_norm_eps": 0}, "layer_norm_eps", "a positive number"),
    ],
)
def test_invalid_values_name_the_field_and_what_is_allowed(fields, field, allowed):
    with pytest.raises(ValueError, match=f"^{field}: got .*; allowed: {re.escape(allowed)}"):
        SinkViTConfig(**fields)


def test_round_trip_through_json(tmp_path):
    config = SinkViTConfig(
        image_size=(32, 48),
        patch_size=(8, 16),
        hidden_size=64,
        num_attention_heads=4,
        num_register_tokens=2,
        attention_gate="headwise",
        layerscale_init=1e-4,
        global_pathway_dim=16,
        pooling="cls+mean",
        num_labels=7,
    )
    config.save_pretrained(tmp_path)
    loaded = SinkViTConfig.from_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "sink_vit"
    assert loaded.to_dict() == config.to_dict() | {"image_size": [32, 48], "patch_size": [8, 16]}
    assert (loaded.grid_size, loaded.num_prefix_tokens, loaded.num_labels) == ((4, 3), 3, 7)


def test_auto_map_names_config_base_and_head_model():
    assert SinkViTConfig().auto_map == {
        "AutoConfig": "configuration_sink_vit.SinkViTConfig",
        "AutoModel": "modeling_sink_vit.SinkViTModel",
        "AutoModelForImageClassification": "modeling_sink_vit.SinkViTForImageClassification",
    }
    # A Hub repo that keeps its code elsewhere overrides entries; the others stay.
    remote = SinkViTConfig(auto_map={"AutoModel": "org/code--modeling_sink_vit.SinkViTModel"})
    assert remote.auto_map["AutoModel"] == "org/code--modeling_sink_vit.SinkViTModel"
    assert remote.auto_map["AutoConfig"] == "configuration_sink_vit.SinkViTConfig"


def test_a_config_of_another_model_type_is_refused(tmp_path):
    ViTConfig(hidden_size=32, num_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type: this is a 'vit' config"):
        SinkViTConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type: this is a 'vit' config"):
        SinkViTForImageClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_presets_set_the_variant_fields(variant):
    config = preset_config(variant, "tiny")
    gate = {"gated": "elementwise", "gated-reg": "elementwise", "gated-gp": "elementwise", "gated-headwise": "headwise"}
    assert config.attention_gate == gate.get(variant, "none")
    assert config.num_register_tokens == (4 if "reg" in variant else 0)
    assert config.global_pathway_dim == (64 if variant.endswith("gp") else 0)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (192, 12, 3)
    assert config.intermediate_size == 4 * 192 and config.layerscale_init == 1e-4


@pytest.mark.parametrize(
    ("size", "shape"),
    [("tiny", (192, 12, 3)), ("small", (384, 12, 6)), ("base", (768, 12, 12)), ("large", (1024, 24, 16))],
)
def test_preset_sizes(size, shape):
    config = preset_config("plain", size)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == shape
    assert (config.image_size, config.patch_size) == (224, 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_toy_size_is_under_a_million_parameters(variant):
    model = SinkViTForImageClassification(preset_config(variant, "toy", num_labels=10))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert set(SIZES) == {"toy", "tiny", "small", "base", "large"}


def test_preset_overrides_and_errors():
    assert preset_config("gated", "toy", attention_gate="headwise", num_labels=3).attention_gate == "headwise"
    with pytest.raises(ValueError, match="variant: got 'gates'; allowed: plain, gated, gated-headwise, reg"):
        preset_config("gates")
    with pytest.raises(ValueError, match="size: got 'huge'; allowed: toy, tiny, small, base, large"):
        preset_config("plain", "huge")


@pytest.mark.parametrize(
    ("variant", "hint"),
    [
        ("gated_reg", " Did you mean 'gated-reg'?"),
        ("headwise", " Did you mean 'gated-headwise'?"),
        ("registers", ""),  # nothing close: no guess
    ],
)
def test_a_misspelt_variant_gets_the_closest_name(variant, hint):
    allowed = "plain, gated, gated-headwise, reg, gated-reg, gp, gated-gp"
    with pytest.raises(ValueError) as error:
        preset_config(variant)
    assert str(error.value) == f"variant: got {variant!r}; allowed: {allowed}.{hint}"
