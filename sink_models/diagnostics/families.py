"""Where each supported vision family keeps its attention parts: names, not code (read from the installed
transformers' modeling files). The capture needs, per block, the attention module (whose kernel call it wraps), the
output projection and the LayerScale gamma of the attention branch (for the update u_j = gamma * W_O^h v_j), and the
token layout: CLS tokens, then registers, then patches."""

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError


@dataclass(frozen=True)
class Family:
    """One family's names. `cls` and `registers` are sums of ints and config fields (a field may be missing: 0)."""

    name: str
    attention: str  # the attention module's attribute in a block
    output: str  # its output projection
    gamma: str | None = None  # dotted path from the block to the attention branch's LayerScale gamma
    cls: tuple = (1,)
    registers: tuple = ()
    padded: bool = False  # inputs carry `pixel_attention_mask` (padding patches) and `spatial_shapes`
    identity_masking: bool = False  # a masked autoencoder: run with every patch kept, in order


_VIT = {"attention": "attention", "output": "o_proj"}
_CLIP = {"attention": "self_attn", "output": "out_proj"}
_LAYERSCALE = "layer_scale1.lambda1"

FAMILIES = {
    family.name: family
    for family in (
        Family("sink_vit", **_VIT, gamma=_LAYERSCALE, registers=("num_register_tokens",)),
        Family("vit", **_VIT),
        Family("deit", **_VIT, cls=(2,)),  # CLS and distillation token
        Family("dinov2", **_VIT, gamma=_LAYERSCALE),
        Family("dinov2_with_registers", **_VIT, gamma=_LAYERSCALE, registers=("num_register_tokens",)),
        Family("dinov3_vit", **_VIT, gamma=_LAYERSCALE, registers=("num_register_tokens",)),
        Family("vit_mae", **_VIT, identity_masking=True),
        Family("beit", **_VIT, gamma="lambda_1"),
        Family("ijepa", **_VIT, cls=()),
        Family("radio", **_VIT, gamma=_LAYERSCALE, cls=("num_cls_tokens",), registers=("num_registers",)),
        # TIPSv2 supervises its "register" tokens with captions: they are CLS tokens (modeling_tipsv2.py's docstring).
        Family("tipsv2_vision_model", **_VIT, gamma=_LAYERSCALE, cls=(1, "num_register_tokens")),
        Family("clip_vision_model", **_CLIP),
        Family("metaclip_2_vision_model", **_CLIP),
        Family("siglip_vision_model", **_CLIP, cls=()),
        Family("siglip2_vision_model", **_CLIP, cls=(), padded=True),
        Family("aimv2_vision_model", attention="attention", output="out_proj", cls=()),
    )
}
SUPPORTED = tuple(FAMILIES)


def vision_config(config):
    """The config of the vision encoder a model of `config` runs: its own, or a dual encoder's `vision_config`."""
    if config.model_type not in FAMILIES and getattr(config, "vision_config", None) is not None:
        return config.vision_config
    return config


def family_of(config) -> Family | None:
    """The family of a model's (or its vision tower's) config; None when the diagnostics do not support it."""
    return FAMILIES.get(vision_config(config).model_type)


def count(config, terms: tuple) -> int:
    return sum(term if isinstance(term, int) else int(getattr(config, term, 0) or 0) for term in terms)


def blocks_of(encoder: nn.Module, family: Family) -> nn.ModuleList:
    """The first module list whose entries all hold the family's attention module: the encoder's blocks (a masked
    autoencoder's decoder blocks come later in module order)."""
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(hasattr(b, family.attention) for b in module):
            return module
    raise InputError(f"model: no blocks with a '{family.attention}' module found in {type(encoder).__name__}.")


def gamma_of(block: nn.Module, family: Family) -> torch.Tensor | None:
    """The attention branch's LayerScale gamma, or None where the family has none (or BEiT's scalar 1.0)."""
    if family.gamma is None:
        return None
    gamma = block.get_submodule(family.gamma.rsplit(".", 1)[0]) if "." in family.gamma else block
    gamma = getattr(gamma, family.gamma.rsplit(".", 1)[-1], None)
    return gamma if isinstance(gamma, torch.Tensor) else None
