"""Stock transformers ViT / DeiT / DINOv2 (with or without registers) -> SinkViT with the same weights, and
`extend` to give any SinkViT (converted or not) gates, registers or a global pathway."""

import re

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from .configuration_sink_vit import SinkViTConfig
from .errors import InputError
from .modeling_sink_vit import SinkViTForImageClassification, SinkViTModel, SinkViTPreTrainedModel

logger = logging.get_logger(__name__)

SUPPORTED = (
    "ViTModel",
    "ViTForImageClassification",
    "Dinov2Model",
    "Dinov2ForImageClassification",
    "Dinov2WithRegistersModel",
    "Dinov2WithRegistersForImageClassification",
)
_SHARED_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "id2label",
    "label2id",
)


def sink_config_from(config) -> SinkViTConfig:
    """The SinkViTConfig describing the same network as a stock ViT or DINOv2(-with-registers) config."""
    fields = {name: getattr(config, name) for name in _SHARED_FIELDS}
    fields["image_size"] = _as_int_or_pair(fields["image_size"])
    fields["patch_size"] = _as_int_or_pair(fields["patch_size"])
    if config.model_type == "vit":
        return SinkViTConfig(intermediate_size=config.intermediate_size, **fields)
    if config.use_swiglu_ffn:
        raise InputError(
            "use_swiglu_ffn: SinkViT has a GELU MLP only; DINOv2 checkpoints with SwiGLU (giant) cannot be converted."
        )
    return SinkViTConfig(
        intermediate_size=int(config.hidden_size * config.mlp_ratio),
        layerscale_init=float(config.layerscale_value),
        drop_path_rate=float(config.drop_path_rate),
        num_register_tokens=getattr(config, "num_register_tokens", 0),
        pooling="cls+mean",
        # DINOv2 resizes its position embeddings to whatever input it gets (its processor crops 224 from a 518 grid).
        interpolate_pos_encoding=True,
        interpolate_antialias=config.model_type == "dinov2_with_registers",
        **fields,
    )


def _as_int_or_pair(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _rename(key: str, head: bool) -> str | None:
    """A stock parameter name -> the SinkViT one; None for parameters SinkViT has no use for."""
    key = re.sub(r"^(vit|dinov2|dinov2_with_registers)\.", "", key)
    if key.startswith(("pooler.", "embeddings.mask_token")):
        return None
    key = key.replace("encoder.layer.", "layers.")
    key = key.replace(".layernorm_before.", ".norm1.").replace(".layernorm_after.", ".norm2.")
    if head and not key.startswith("classifier."):
        key = "sink_vit." + key
    return key


def from_transformers(model: PreTrainedModel) -> SinkViTPreTrainedModel:
    """Convert a stock ViT / DeiT (no distillation) / DINOv2 / DINOv2-with-registers model to SinkViT.

    Base models become `SinkViTModel`, models with a classification head `SinkViTForImageClassification`; the
    outputs agree (`last_hidden_state`, `logits`). ViT's dense+tanh pooler and the masked-modelling mask token are
    dropped: SinkViT's `pooler_output` is the pooled tokens the classifier reads. The attention implementation the
    model was loaded with is kept.
    """
    name = type(model).__name__
    if name not in SUPPORTED:
        raise InputError(f"model: {name} cannot be converted; supported classes: {', '.join(SUPPORTED)}.")
    head = name.endswith("ForImageClassification")
    config = sink_config_from(model.config)
    config.converted_from = model.config.name_or_path or name
    config._attn_implementation = model.config._attn_implementation
    state = {}
    for key, value in model.state_dict().items():
        new_key = _rename(key, head)
        if new_key is not None:
            state[new_key] = value
    if "pooler.dense.weight" in model.state_dict():
        logger.warning("from_transformers: ViT's dense+tanh pooler has no SinkViT counterpart and is dropped.")
    target = (SinkViTForImageClassification if head else SinkViTModel)(config)
    target.load_state_dict(state, strict=True)
    source = next(model.parameters())
    return target.to(device=source.device, dtype=source.dtype).train(model.training)


@torch.no_grad()
def extend(
    model: SinkViTPreTrainedModel,
    *,
    attention_gate: str | None = None,
    num_register_tokens: int | None = None,
    global_pathway_dim: int | None = None,
) -> SinkViTPreTrainedModel:
    """A copy of `model` with new parts added; every existing weight is kept. How the new parts start:

    - gate (`attention_gate`, on a model without one): `gate_proj` zero, so every gate is sigmoid(0) = 0.5, and
      `o_proj.weight` doubled: the outputs are exactly unchanged and the gate receives gradients from step one.
    - global pathway (`global_pathway_dim`, on a model without one): default init with `out_proj` zero: outputs
      unchanged.
    - registers (`num_register_tokens`, at least the current count): the existing registers are kept, new ones get
      the model's truncated-normal init. New registers change the outputs (every token can attend to them): fine-tune.
    """
    if not isinstance(model, SinkViTPreTrainedModel):
        raise TypeError(f"model: expected a SinkViT model, got {type(model).__name__}; use from_transformers first.")
    old = model.config
    if attention_gate == "none" and old.attention_gate != "none":
        raise InputError(f"attention_gate: removing the model's {old.attention_gate!r} gate is not supported.")
    if attention_gate not in (None, "none") and old.attention_gate != "none":
        raise InputError(
            f"attention_gate: the model already has a {old.attention_gate!r} gate; only a new gate can be added."
        )
    if global_pathway_dim and old.global_pathway_dim:
        raise InputError("global_pathway_dim: the model already has a global pathway.")
    if num_register_tokens is not None and num_register_tokens < old.num_register_tokens:
        raise InputError(
            f"num_register_tokens: got {num_register_tokens}; allowed: at least the current {old.num_register_tokens}."
        )
    changes = {
        "attention_gate": old.attention_gate if attention_gate in (None, "none") else attention_gate,
        "num_register_tokens": old.num_register_tokens if num_register_tokens is None else num_register_tokens,
        "global_pathway_dim": global_pathway_dim or old.global_pathway_dim,
    }
    config = SinkViTConfig(**{**old.to_dict(), **changes})
    config._attn_implementation = old._attn_implementation
    source = next(model.parameters())
    new = type(model)(config).to(device=source.device, dtype=source.dtype)
    base = new.base_model

    state = model.state_dict()
    prefix = "sink_vit." if isinstance(new, SinkViTForImageClassification) else ""
    registers = state.pop(prefix + "embeddings.register_tokens", None)
    missing, unexpected = new.load_state_dict(state, strict=False)
    new_parts = ("gate_proj", "global_pathway", "register_tokens")
    if unexpected or any(not any(part in key for part in new_parts) for key in missing):
        raise RuntimeError(f"extend: weights do not line up (missing {missing}, unexpected {unexpected}).")
    if registers is not None:
        base.embeddings.register_tokens[:, : registers.shape[1]] = registers
    for layer in base.layers:
        if old.attention_gate == "none" and config.attention_gate != "none":
            layer.attention.gate_proj.weight.zero_()
            layer.attention.gate_proj.bias.zero_()
            layer.attention.o_proj.weight.mul_(2.0)
        if not old.global_pathway_dim and config.global_pathway_dim:
            layer.global_pathway.out_proj.weight.zero_()
    return new.train(model.training)
