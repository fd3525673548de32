"""Named variants x sizes -> SinkViTConfig (the zoo's vocabulary: `vit-{size}-{variant}-{dataset}`)."""

import difflib

from .configuration_sink_vit import SinkViTConfig
from .errors import InputError

# The paper trains every variant with LayerScale (gamma init 1e-4), so variants differ only in gate/registers/pathway.
VARIANTS: dict[str, dict] = {
    "plain": {},
    "gated": {"attention_gate": "elementwise"},
    "gated-headwise": {"attention_gate": "headwise"},
    "reg": {"num_register_tokens": 4},
    "gated-reg": {"attention_gate": "elementwise", "num_register_tokens": 4},
    "gp": {"global_pathway_dim": 64},
    "gated-gp": {"attention_gate": "elementwise", "global_pathway_dim": 64},
}

SIZES: dict[str, dict] = {
    # toy: small enough for CI (about 0.2M parameters), sized for 32 x 32 inputs such as upscaled digits.
    "toy": {"image_size": 32, "patch_size": 4, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4},
    "tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3},
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}


def check_variant(variant: str) -> None:
    """A ValueError naming the allowed variants (and the closest one, for a misspelling) unless `variant` is one."""
    if variant not in VARIANTS:
        close = difflib.get_close_matches(str(variant), VARIANTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(f"variant: got {variant!r}; allowed: {', '.join(VARIANTS)}.{hint}")


def preset_config(variant: str, size: str = "small", **overrides) -> SinkViTConfig:
    """The config of a named variant at a named size; `overrides` set any other SinkViTConfig field."""
    check_variant(variant)
    if size not in SIZES:
        raise InputError(f"size: got {size!r}; allowed: {', '.join(SIZES)}.")
    fields = {"image_size": 224, "patch_size": 16, "layerscale_init": 1e-4, **SIZES[size], **VARIANTS[variant]}
    fields.setdefault("intermediate_size", 4 * fields["hidden_size"])
    return SinkViTConfig(**{**fields, **overrides})


def dinov3_config(size: str = "small", num_register_tokens: int = 4):
    """A transformers DINOv3 ViT config of a preset size (ViT-S/16 with 4 registers at "small"): the stock peer the
    benchmarks run through the same diagnostics and edits."""
    from transformers import DINOv3ViTConfig

    dims = preset_config("reg", size)
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size")
    return DINOv3ViTConfig(
        **{name: getattr(dims, name) for name in fields},
        patch_size=16,
        num_register_tokens=num_register_tokens,
    )
