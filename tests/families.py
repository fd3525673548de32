"""Tiny random models of every family the diagnostics support, with what the tests need to know about each, written
down here from the families' modeling files (independently of sink_models.diagnostics.families): where the blocks
are, the attention's output projection and LayerScale gamma, and the token layout (CLS tokens, registers)."""

from dataclasses import dataclass

import torch
import transformers as tf

SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
IMAGE = {"image_size": 32, "patch_size": 8}  # a 4 x 4 patch grid
TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64}


@dataclass
class Case:
    build: object  # () -> model
    blocks: str  # dotted path from the model to its block list
    attention: str
    output: str
    gamma: str | None  # dotted path from a block to the attention branch's LayerScale gamma
    cls: int
    registers: int
    tower: str | None = None  # a dual encoder's vision model, which runs the images
    padded: bool = False


def _vision(config_class, model_class, **fields):
    return lambda: model_class(config_class(**SIZES, **IMAGE, **fields))


def _dual(config_class, model_class, **vision):
    def build():
        return model_class(config_class(vision_config={**SIZES, **IMAGE, **vision}, text_config=TEXT))

    return build


CASES = {
    "vit": Case(_vision(tf.ViTConfig, tf.ViTModel), "layers", "attention", "o_proj", None, 1, 0),
    "deit": Case(_vision(tf.DeiTConfig, tf.DeiTModel), "layers", "attention", "o_proj", None, 2, 0),
    "dinov2": Case(
        _vision(tf.Dinov2Config, tf.Dinov2Model, layerscale_value=0.5),
        "encoder.layer", "attention", "o_proj", "layer_scale1.lambda1", 1, 0,
    ),
    "dinov2_reg": Case(
        _vision(tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersForImageClassification, num_labels=3),
        "dinov2_with_registers.encoder.layer", "attention", "o_proj", "layer_scale1.lambda1", 1, 4,
    ),
    # RoPE on the patch tokens; rope_theta large so that some dimensions barely rotate (the planted head uses them).
    "dinov3": Case(
        _vision(tf.DINOv3ViTConfig, tf.DINOv3ViTModel, num_register_tokens=4, layerscale_value=0.5, rope_theta=1e4),
        "model.layer", "attention", "o_proj", "layer_scale1.lambda1", 1, 4,
    ),
    "clip": Case(
        _vision(tf.CLIPVisionConfig, tf.CLIPVisionModel), "encoder.layers", "self_attn", "out_proj", None, 1, 0
    ),
    "clip_dual": Case(
        _dual(tf.CLIPConfig, tf.CLIPModel),
        "vision_model.encoder.layers", "self_attn", "out_proj", None, 1, 0, tower="vision_model",
    ),
    "metaclip_2": Case(
        _vision(tf.MetaClip2VisionConfig, tf.MetaClip2VisionModel),
        "encoder.layers", "self_attn", "out_proj", None, 1, 0,
    ),
    "siglip": Case(
        _vision(tf.SiglipVisionConfig, tf.SiglipVisionModel), "encoder.layers", "self_attn", "out_proj", None, 0, 0
    ),
    "siglip_dual": Case(
        _dual(tf.SiglipConfig, tf.SiglipModel),
        "vision_model.encoder.layers", "self_attn", "out_proj", None, 0, 0, tower="vision_model",
    ),
    "siglip2": Case(
        lambda: tf.Siglip2VisionModel(tf.Siglip2VisionConfig(**SIZES, patch_size=8, num_patches=16)),
        "encoder.layers", "self_attn", "out_proj", None, 0, 0, padded=True,
    ),
    # mask_ratio 0.75 on purpose: the diagnostics turn masking off.
    "vit_mae": Case(
        _vision(tf.ViTMAEConfig, tf.ViTMAEModel, mask_ratio=0.75), "layers", "attention", "o_proj", None, 1, 0
    ),
    "beit": Case(
        _vision(tf.BeitConfig, tf.BeitModel, use_relative_position_bias=True, layer_scale_init_value=0.5),
        "layers", "attention", "o_proj", "lambda_1", 1, 0,
    ),
    "ijepa": Case(_vision(tf.IJepaConfig, tf.IJepaModel), "layers", "attention", "o_proj", None, 0, 0),
    "radio": Case(
        _vision(tf.RadioConfig, tf.RadioModel, num_cls_tokens=2, num_registers=3, layerscale_value=0.5),
        "encoder.layer", "attention", "o_proj", "layer_scale1.lambda1", 2, 3,
    ),
    # TIPSv2's register token is a second, caption-supervised CLS token.
    "tipsv2": Case(
        _vision(tf.Tipsv2VisionConfig, tf.Tipsv2VisionModel, num_register_tokens=1, layerscale_value=0.5),
        "encoder.layer", "attention", "o_proj", "layer_scale1.lambda1", 2, 0,
    ),
    "aimv2": Case(
        _vision(tf.Aimv2VisionConfig, tf.Aimv2VisionModel), "encoder.layers", "attention", "out_proj", None, 0, 0
    ),
}  # fmt: skip


def build(name: str, attn_implementation: str = "sdpa"):
    """The family's tiny model with random (not default) prefix tokens, LayerScale gammas and position biases."""
    torch.manual_seed(0)
    model = CASES[name].build().eval().requires_grad_(False)
    model.set_attn_implementation(attn_implementation)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if any(part in parameter_name for part in ("lambda", "cls", "register", "relative_position_bias_table")):
                parameter.normal_(0, 0.5)
    return model


def inputs(name: str, batch: int = 3, seed: int = 0) -> dict:
    """Model inputs: images, or SigLIP2's patches with the last image padded (12 of 16 patches, a 3 x 4 grid)."""
    generator = torch.Generator().manual_seed(seed)
    if not CASES[name].padded:
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=generator)}
    mask = torch.ones(batch, 16, dtype=torch.long)
    mask[-1, 12:] = 0
    shapes = torch.tensor([[4, 4]] * (batch - 1) + [[3, 4]])
    pixels = torch.randn(batch, 16, 3 * 8 * 8, generator=generator) * mask[..., None]
    return {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": shapes}


def part(module, path: str | None):
    for name in path.split(".") if path else ():
        module = getattr(module, name)
    return module


def tower(model, name: str):
    return part(model, CASES[name].tower)


def blocks(model, name: str):
    return part(model, CASES[name].blocks)


def gamma(block, name: str):
    value = part(block, CASES[name].gamma)
    return value if isinstance(value, torch.Tensor) else None
