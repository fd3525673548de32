"""Where each supported architecture keeps its attention parts, and the streaming capture behind `diagnose`.

Forward hooks read what the model computes anyway (the q/k/v projections, the gate, the attention output that
o_proj reads, each block's output), so the model runs on whatever attention backend it was loaded with; the
attention matrix of one layer is rebuilt from its queries and keys, measured, and dropped before the next layer runs.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..convert import SUPPORTED as CONVERTIBLE

# Ours, and every stock class that sink_models.convert takes.
SUPPORTED = ("SinkViTModel", "SinkViTForImageClassification", *CONVERTIBLE)


@dataclass
class LayerParts:
    """One block: its attention projections, LayerScale gamma (or None) and gate projection (or None)."""

    block: nn.Module
    attention: nn.Module
    gamma: torch.Tensor | None
    gate_proj: nn.Module | None


@dataclass
class Adapter:
    """Token layout and per-block parts of a supported model, and how to read a block's output tokens."""

    layers: list[LayerParts]
    num_heads: int
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    block_output: Callable[[object], torch.Tensor]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of a SinkViT, ViT (DeiT), DINOv2 or DINOv2-with-registers model, with or without a head."""
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ValueError(
            f"model: {name} is not supported by the diagnostics; supported classes: {', '.join(SUPPORTED)}."
        )
    config = model.config
    base = model.base_model
    patch = config.patch_size
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    if config.model_type == "sink_vit":
        layers = [
            LayerParts(block, block.attention, getattr(block.layer_scale1, "lambda1", None), block.attention.gate_proj)
            for block in base.layers
        ]
        return Adapter(layers, config.num_attention_heads, config.num_prefix_tokens, patch, lambda out: out[0])
    if config.model_type == "vit":
        layers = [LayerParts(block, block.attention, None, None) for block in base.layers]
        return Adapter(layers, config.num_attention_heads, 1, patch, _first)
    registers = getattr(config, "num_register_tokens", 0)
    layers = [LayerParts(block, block.attention, block.layer_scale1.lambda1, None) for block in base.encoder.layer]
    return Adapter(layers, config.num_attention_heads, 1 + registers, patch, _first)


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class LayerCapture:
    """Forward hooks that hand each block's q, k, v, gate and o_proj input to `on_attention` as soon as its attention
    has run (so they are freed before the MLP allocates its own), and the block's output tokens to `on_output`."""

    def __init__(
        self,
        adapter: Adapter,
        on_attention: Callable[[int, dict], None],
        on_output: Callable[[int, torch.Tensor], None],
    ):
        self.adapter, self.on_attention, self.on_output = adapter, on_attention, on_output
        self.captured: dict = {}
        self.handles = []

    def __enter__(self) -> "LayerCapture":
        for index, parts in enumerate(self.adapter.layers):
            for name in ("q_proj", "k_proj", "v_proj"):
                self.handles.append(getattr(parts.attention, name).register_forward_hook(self._keep(name)))
            if parts.gate_proj is not None:
                self.handles.append(parts.gate_proj.register_forward_hook(self._keep("gate_proj")))
            else:
                # Without a gate, o_proj's input is the kernel's output o = A v: the diagnostics need not redo it.
                self.handles.append(parts.attention.o_proj.register_forward_hook(self._keep("o_proj", from_input=True)))
            self.handles.append(parts.attention.register_forward_hook(self._attention_done(index)))
            self.handles.append(parts.block.register_forward_hook(self._block_done(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.captured.clear()

    def _keep(self, name: str, from_input: bool = False):
        def hook(module, args, output):
            self.captured[name] = args[0] if from_input else output

        return hook

    def _attention_done(self, index: int):
        def hook(module, args, output):
            captured, self.captured = self.captured, {}
            self.on_attention(index, captured)

        return hook

    def _block_done(self, index: int):
        def hook(module, args, output):
            self.on_output(index, self.adapter.block_output(output))

        return hook
