"""SinkViT configuration: a ViT with optional attention gates, registers, LayerScale and a global pathway."""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

ATTENTION_GATES = ("none", "headwise", "elementwise")
POOLINGS = ("cls", "mean", "cls+mean")
# Written into every saved config so that AutoModel works on a folder saved from the classification model too.
AUTO_MAP = {
    "AutoConfig": "configuration_sink_vit.SinkViTConfig",
    "AutoModel": "modeling_sink_vit.SinkViTModel",
    "AutoModelForImageClassification": "modeling_sink_vit.SinkViTForImageClassification",
}


def as_pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SinkViTConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SinkViTModel`]. The defaults give a plain ViT-B/16 at 224 pixels.

    Args:
        image_size (`int` or `(height, width)`): training resolution; the position embeddings cover its patch grid.
        patch_size (`int` or `(height, width)`): side of the square (or rectangular) patches; must divide image_size.
        num_channels (`int`): input channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps:
            the usual transformer sizes; `intermediate_size=0` leaves the MLP out (attention-only toy models).
        qkv_bias (`bool`): biases on the query, key and value projections.
        proj_bias (`bool`): bias on the attention output projection (toy sink tasks train without it).
        hidden_dropout_prob, attention_probs_dropout_prob, drop_path_rate: regularisation.
        initializer_range (`float`): std of the truncated-normal initialisation.
        num_register_tokens (`int`): learnable tokens after CLS, without position embedding (Darcet et al. 2023).
        attention_gate (`str`): `"none"`, `"headwise"` (one sigmoid per head) or `"elementwise"` (one per channel),
            computed from the block's normed input and applied to the head outputs before `o_proj` (Qiu et al. 2025).
        layerscale_init (`float` or `None`): initial LayerScale gamma on both residual branches; `None` disables it.
        global_pathway_dim (`int`): state size of the position-free global pathway; 0 disables it.
        pooling (`str`): what the classifier reads: `"cls"`, `"mean"` (of patch tokens) or `"cls+mean"` (DINOv2).
        interpolate_pos_encoding (`bool`): default of the forward keyword: resize position embeddings to any input.
        interpolate_antialias (`bool`): antialias when shrinking position embeddings (DINOv2 with registers does).
        converted_from (`str` or `None`): the stock checkpoint (or class) `sink_models.convert` made this model from.
    """

    model_type = "sink_vit"

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int | list[int] | tuple[int, int] = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    proj_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    initializer_range: float = 0.02
    num_register_tokens: int = 0
    attention_gate: str = "none"
    layerscale_init: float | None = None
    global_pathway_dim: int = 0
    pooling: str = "cls"
    interpolate_pos_encoding: bool = False
    interpolate_antialias: bool = False
    converted_from: str | None = None

    def __post_init__(self, **kwargs):
        model_type = kwargs.pop("model_type", self.model_type)
        if model_type != self.model_type:
            raise ValueError(
                f"model_type: this is a {model_type!r} config; SinkViTConfig reads {self.model_type!r} configs only. "
                "Convert a stock ViT/DINOv2 model with sink_models.convert.from_transformers instead."
            )
        self.validate()
        self.auto_map = {**AUTO_MAP, **(kwargs.pop("auto_map", None) or {})}
        super().__post_init__(**kwargs)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS and the registers."""
        return 1 + self.num_register_tokens

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, columns) at `image_size`."""
        (ih, iw), (ph, pw) = as_pair(self.image_size), as_pair(self.patch_size)
        return ih // ph, iw // pw

    def validate(self) -> None:
        """Raise `ValueError` naming the first invalid field and what it allows (transformers also calls this
        before saving)."""
        parent = getattr(super(), "validate", None)
        if parent is not None and getattr(self, "_post_init_done", False):
            parent()

        def check(ok: bool, field: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{field}: got {getattr(self, field)!r}; allowed: {allowed}.")

        for field in ("image_size", "patch_size"):
            value = getattr(self, field)
            ok = _is_int(value) or (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_int, value)))
            check(ok and min(as_pair(value)) > 0, field, "a positive int or a (height, width) pair of positive ints")
        (ih, iw), (ph, pw) = as_pair(self.image_size), as_pair(self.patch_size)
        check(ph <= ih and pw <= iw, "patch_size", f"at most the image size {(ih, iw)}")
        check(ih % ph == 0 and iw % pw == 0, "patch_size", f"a divisor of the image size {(ih, iw)} on each side")
        for field in ("num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            check(_is_int(getattr(self, field)) and getattr(self, field) > 0, field, "a positive int")
        check(_is_int(self.intermediate_size) and self.intermediate_size >= 0, "intermediate_size", "an int >= 0")
        check(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            f"a multiple of num_attention_heads ({self.num_attention_heads})",
        )
        check(self.hidden_act in ACT2FN, "hidden_act", f"one of {sorted(ACT2FN)}")
        check(_is_number(self.layer_norm_eps) and self.layer_norm_eps > 0, "layer_norm_eps", "a positive number")
        for field in ("qkv_bias", "proj_bias", "interpolate_pos_encoding", "interpolate_antialias"):
            check(isinstance(getattr(self, field), bool), field, "True or False")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, field)
            check(_is_number(value) and 0 <= value < 1, field, "a probability in [0, 1)")
        check(_is_number(self.initializer_range) and self.initializer_range >= 0, "initializer_range", "a number >= 0")
        check(_is_int(self.num_register_tokens) and self.num_register_tokens >= 0, "num_register_tokens", "an int >= 0")
        check(self.attention_gate in ATTENTION_GATES, "attention_gate", f"one of {ATTENTION_GATES}")
        check(
            self.layerscale_init is None or (_is_number(self.layerscale_init) and self.layerscale_init > 0),
            "layerscale_init",
            "None (no LayerScale) or a positive number",
        )
        check(_is_int(self.global_pathway_dim) and self.global_pathway_dim >= 0, "global_pathway_dim", "an int >= 0")
        check(self.pooling in POOLINGS, "pooling", f"one of {POOLINGS}")
        check(self.converted_from is None or isinstance(self.converted_from, str), "converted_from", "None or a str")


__all__ = ["SinkViTConfig"]
