"""SinkViT: a ViT with optional attention gates, register tokens, LayerScale and a global pathway.

Token layout, everywhere: [CLS, REG_1..REG_R, patches]; `config.num_prefix_tokens` = 1 + R.
The gate and the global pathway act outside the attention kernel, so eager, sdpa, flex and flash all stay valid.
This file and configuration_sink_vit.py are the Hub remote code: they use only public transformers API, and the
outputs (hidden states, attentions, gates) are collected in the forward loop, in plain sight.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_sink_vit import SinkViTConfig, as_pair

logger = logging.get_logger(__name__)


@dataclass
class SinkViTModelOutput(BaseModelOutputWithPooling):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, pooled_size)`):
        The features the classifier reads, as `config.pooling` says (CLS, mean patch token, or both concatenated).
    gate_values (`tuple(torch.FloatTensor)`, *optional*, returned with `output_gate_values=True`):
        One tensor per layer, `(batch_size, sequence_length, num_heads or hidden_size)`: the attention gate.
    """

    gate_values: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SinkViTImageClassifierOutput(ImageClassifierOutput):
    r"""
    gate_values (`tuple(torch.FloatTensor)`, *optional*, returned with `output_gate_values=True`):
        One tensor per layer, `(batch_size, sequence_length, num_heads or hidden_size)`: the attention gate.
    """

    gate_values: tuple[torch.FloatTensor, ...] | None = None


class SinkViTPatchEmbeddings(nn.Module):
    """Cuts `(batch, channels, height, width)` images into patches and projects each to `hidden_size`."""

    def __init__(self, config: SinkViTConfig):
        super().__init__()
        self.patch_size = as_pair(config.patch_size)
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values: expected a 4-d tensor (batch, channels, height, width), got shape "
                f"{tuple(pixel_values.shape)}."
            )
        _, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values: expected {self.num_channels} channels (config.num_channels), got {channels}."
            )
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(
                f"pixel_values: image size {height}x{width} is not a multiple of the patch size "
                f"{self.patch_size[0]}x{self.patch_size[1]}."
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class SinkViTEmbeddings(nn.Module):
    """CLS token, register tokens and patch embeddings; position embeddings for CLS and patches only."""

    def __init__(self, config: SinkViTConfig):
        super().__init__()
        self.config = config
        self.grid_size = config.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))
            if config.num_register_tokens
            else None
        )
        self.patch_embeddings = SinkViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings resized (bicubic, in float32 as DINOv2 does) to a patch grid of `grid` rows x columns."""
        if grid == self.grid_size:
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        cls_pos, patch_pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        patch_pos = patch_pos.reshape(1, *self.grid_size, dim).permute(0, 3, 1, 2)
        patch_pos = nn.functional.interpolate(
            patch_pos.float(),
            size=grid,
            mode="bicubic",
            align_corners=False,
            antialias=self.config.interpolate_antialias,
        ).to(cls_pos.dtype)
        return torch.cat((cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        patches = self.patch_embeddings(pixel_values)
        batch_size, _, height, width = pixel_values.shape
        grid = (height // self.patch_embeddings.patch_size[0], width // self.patch_embeddings.patch_size[1])
        if grid != self.grid_size and not interpolate_pos_encoding:
            expected = as_pair(self.config.image_size)
            raise ValueError(
                f"pixel_values: image size {height}x{width} does not match the model's {expected[0]}x{expected[1]} "
                "(config.image_size); pass interpolate_pos_encoding=True to resize the position embeddings."
            )
        embeddings = torch.cat((self.cls_token.expand(batch_size, -1, -1), patches), dim=1)
        embeddings = embeddings + self.interpolate_pos_encoding(grid)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch_size, -1, -1)
            embeddings = torch.cat((embeddings[:, :1], registers, embeddings[:, 1:]), dim=1)
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SinkViTAttention(nn.Module):
    """Multi-head self-attention through the attention-function registry, with an optional sigmoid output gate."""

    def __init__(self, config: SinkViTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.proj_bias)
        gate_size = {"none": 0, "headwise": self.num_heads, "elementwise": config.hidden_size}[config.attention_gate]
        self.gate_proj = nn.Linear(config.hidden_size, gate_size) if gate_size else None

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """`output_attentions=True` runs this call through the eager function, the only one that returns maps."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = eager_attention_forward
        if not output_attentions:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
        )  # attn_output: (batch, tokens, heads, head_dim)

        gate = None
        if self.gate_proj is not None:
            # Qiu et al.'s G1 gate: the head can switch itself off instead of routing to a null (sink) token.
            gate = torch.sigmoid(self.gate_proj(hidden_states))
            attn_output = attn_output * gate.view(*input_shape, self.num_heads, -1)
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1))
        return attn_output, attn_weights, gate


class SinkViTGlobalPathway(nn.Module):
    """Position-free route for shared information (paper v2, Eq. 4):
    o_i = sigmoid(w_gamma x_i + b) * W_OG sum_j softmax_j(w_P x_j) W_VG x_j."""

    def __init__(self, config: SinkViTConfig):
        super().__init__()
        self.score_proj = nn.Linear(config.hidden_size, 1, bias=False)
        self.value_proj = nn.Linear(config.hidden_size, config.global_pathway_dim, bias=False)
        self.out_proj = nn.Linear(config.global_pathway_dim, config.hidden_size, bias=False)
        self.gate_proj = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weights = self.score_proj(hidden_states).softmax(dim=1, dtype=torch.float32).to(hidden_states.dtype)
        # W_VG is linear, so pool the tokens first: one (1 x N)(N x d) product instead of N value projections.
        state = self.value_proj(weights.transpose(1, 2) @ hidden_states)
        return torch.sigmoid(self.gate_proj(hidden_states)) * self.out_proj(state)


class SinkViTMLP(nn.Module):
    def __init__(self, config: SinkViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class SinkViTLayerScale(nn.Module):
    def __init__(self, config: SinkViTConfig):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((config.hidden_size,), float(config.layerscale_init)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class SinkViTDropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual update during training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return hidden_states
        keep = 1.0 - self.drop_prob
        mask = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)).bernoulli_(keep)
        return hidden_states * mask / keep


class SinkViTLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + LS1(attention(norm1 x) [+ global pathway]), then x + LS2(MLP(norm2 x))."""

    def __init__(self, config: SinkViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = SinkViTAttention(config)
        self.global_pathway = SinkViTGlobalPathway(config) if config.global_pathway_dim else None
        self.layer_scale1 = SinkViTLayerScale(config) if config.layerscale_init is not None else nn.Identity()
        self.mlp = None
        if config.intermediate_size:
            self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.mlp = SinkViTMLP(config)
            self.layer_scale2 = SinkViTLayerScale(config) if config.layerscale_init is not None else nn.Identity()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = SinkViTDropPath(config.drop_path_rate) if config.drop_path_rate > 0 else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the new tokens, the attention weights (with `output_attentions`) and the gate values (if gated)."""
        normed = self.norm1(hidden_states)
        update, attn_weights, gate = self.attention(normed, output_attentions=output_attentions)
        if self.global_pathway is not None:
            update = update + self.global_pathway(normed)
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(self.dropout(update)))
        if self.mlp is not None:
            update = self.mlp(self.norm2(hidden_states))
            hidden_states = hidden_states + self.drop_path(self.layer_scale2(self.dropout(update)))
        return hidden_states, attn_weights, gate


class SinkViTPreTrainedModel(PreTrainedModel):
    config_class = SinkViTConfig
    base_model_prefix = "sink_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SinkViTEmbeddings", "SinkViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def __init__(self, config: SinkViTConfig, *inputs, **kwargs):
        # Compare model types, not classes: remote code may load the config class from another module copy.
        if getattr(config, "model_type", None) != SinkViTConfig.model_type:
            raise TypeError(
                f"config: expected a SinkViTConfig, got {type(config).__name__}. "
                "Convert stock ViT/DINOv2 models with sink_models.convert.from_transformers."
            )
        # Fields may have been changed after the config was built (from_pretrained(..., field=value) does that).
        config.validate()
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but weights load from safetensors only: nothing is unpickled."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SinkViTEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            if module.register_tokens is not None:
                init.trunc_normal_(module.register_tokens, mean=0.0, std=std)
        elif isinstance(module, SinkViTLayerScale):
            init.constant_(module.lambda1, self.config.layerscale_init)


class SinkViTModel(SinkViTPreTrainedModel):
    # Diagnostics load the base model from classification checkpoints: their head is expected to be left out.
    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]

    def __init__(self, config: SinkViTConfig):
        super().__init__(config)
        self.embeddings = SinkViTEmbeddings(config)
        self.layers = nn.ModuleList([SinkViTLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> SinkViTPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        """The classifier's input from the final tokens, as `config.pooling` says; registers are never pooled."""
        cls_token = sequence_output[:, 0]
        if self.config.pooling == "cls":
            return cls_token
        patch_mean = sequence_output[:, self.config.num_prefix_tokens :].mean(dim=1)
        return patch_mean if self.config.pooling == "mean" else torch.cat((cls_token, patch_mean), dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gate_values: bool | None = None,
        return_dict: bool | None = None,
    ) -> SinkViTModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): the images.
        interpolate_pos_encoding (`bool`, *optional*): resize the position embeddings to the input size; defaults to
            `config.interpolate_pos_encoding`.
        output_attentions (`bool`, *optional*): per-layer attention maps. Only the eager function returns them, so
            under sdpa, flex or flash attention this call runs eager attention (same outputs, slower; warned once).
        output_hidden_states (`bool`, *optional*): the embeddings and every layer's output (before the final norm).
        output_gate_values (`bool`, *optional*): per-layer gate values (empty for models without a gate).
        There is no `**kwargs`: a misspelt or unsupported keyword (`head_mask`, `attention_mask`) is an error,
        never silently ignored.
        """
        if pixel_values is None:
            raise ValueError("pixel_values: required, a (batch, channels, height, width) tensor.")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if interpolate_pos_encoding is None:
            interpolate_pos_encoding = config.interpolate_pos_encoding
        implementation = config._attn_implementation
        if output_attentions and implementation not in (None, "eager"):
            # Attention visualisers call output_attentions=True without switching backends: give them the maps.
            logger.warning_once(
                f"output_attentions=True: {implementation!r} attention returns no maps, so calls that ask for them run "
                "eager attention; load the model with attn_implementation='eager' to make that the default."
            )

        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        all_gates = [] if output_gate_values else None
        for layer in self.layers:
            hidden_states, attn_weights, gate = layer(hidden_states, output_attentions=bool(output_attentions))
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if output_attentions:
                all_attentions.append(attn_weights)
            if output_gate_values and gate is not None:
                all_gates.append(gate)
        sequence_output = self.layernorm(hidden_states)
        outputs = SinkViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.pool(sequence_output),
            hidden_states=None if all_hidden_states is None else tuple(all_hidden_states),
            attentions=None if all_attentions is None else tuple(all_attentions),
            gate_values=None if all_gates is None else tuple(all_gates),
        )
        return outputs if return_dict else outputs.to_tuple()


class SinkViTForImageClassification(SinkViTPreTrainedModel):
    def __init__(self, config: SinkViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.sink_vit = SinkViTModel(config)
        pooled_size = config.hidden_size * (2 if config.pooling == "cls+mean" else 1)
        self.classifier = nn.Linear(pooled_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gate_values: bool | None = None,
        return_dict: bool | None = None,
    ) -> SinkViTImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): targets for the classification loss.
        Other arguments as in [`SinkViTModel.forward`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs: SinkViTModelOutput = self.sink_vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_gate_values=output_gate_values,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        result = SinkViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            gate_values=outputs.gate_values,
        )
        return result if return_dict else result.to_tuple()


SinkViTConfig.register_for_auto_class()
SinkViTModel.register_for_auto_class("AutoModel")
SinkViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["SinkViTForImageClassification", "SinkViTModel", "SinkViTPreTrainedModel"]
