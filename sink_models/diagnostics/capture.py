"""The streaming capture behind `diagnose`: the model's own attention kernel, seen through transformers' attention
interface.

While a capture is active, the configs of the captured attention modules name `sink_capture:<backend>`, a function
registered with `AttentionInterface` that calls the backend the model was loaded with (sdpa, eager, flex, ...) and hands
the kernel's query, key, value, mask or bias, scaling and output to the diagnostics: they are those after RoPE, q/k
norms and logit biases, and the model's outputs are those of an uninstrumented forward. The mask function registered
under the same name is the backend's own, so masks keep their format. The backend is restored on exit, also on error.
"""

import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import InputError
from .families import FAMILIES, Family, blocks_of, count, family_of, gamma_of, vision_config

PREFIX = "sink_capture:"


@dataclass
class LayerParts:
    """One block: its attention module, output projection, LayerScale gamma (or None) and gate projection (or None)."""

    block: nn.Module
    attention: nn.Module
    output: nn.Linear
    gamma: torch.Tensor | None
    gate_proj: nn.Module | None


@dataclass
class Adapter:
    """A supported model's family, token layout and per-block parts, and the module its forward runs."""

    family: Family
    layers: list[LayerParts]
    num_heads: int
    num_cls_tokens: int
    num_register_tokens: int
    patch_size: tuple[int, int]
    num_channels: int
    forward: nn.Module  # the model itself, or a dual encoder's vision tower

    @property
    def num_prefix_tokens(self) -> int:
        return self.num_cls_tokens + self.num_register_tokens


def supported_names() -> str:
    return ", ".join(FAMILIES)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of any supported model, base or with a head; a dual encoder (CLIPModel, SiglipModel, ...) is
    diagnosed through its `vision_model`."""
    config = getattr(model, "config", None)
    family = None if config is None else family_of(config)
    if family is None:
        kind = type(model).__name__ if config is None else f"{type(model).__name__} (model_type {config.model_type!r})"
        raise InputError(
            f"model: {kind} is not supported by the diagnostics, which need a vision encoder whose attention runs "
            f"through transformers' attention-function registry; supported families (model_type): {supported_names()}."
        )
    encoder = model
    if vision_config(config) is not config and not type(model).__name__.endswith("ForImageClassification"):
        encoder = model.vision_model
    config = vision_config(config)
    layers = []
    for block in blocks_of(encoder, family):
        attention = getattr(block, family.attention)
        layers.append(
            LayerParts(
                block,
                attention,
                getattr(attention, family.output),
                gamma_of(block, family),
                getattr(attention, "gate_proj", None),
            )
        )
    patch = config.patch_size
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    return Adapter(
        family,
        layers,
        config.num_attention_heads,
        count(config, family.cls),
        count(config, family.registers),
        patch,
        getattr(config, "num_channels", 3),
        encoder,
    )


@dataclass
class Kernel:
    """One attention kernel call as the backend saw it: query, key, value (batch, heads, tokens, d_h), the mask or
    additive bias, the scaling, and the output o = A v (batch, tokens, heads, d_h), before any gate."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: object
    scaling: float
    output: torch.Tensor


# Handlers by attention module while routed: the registered function serves every model, and passes modules without
# a handler (a masked autoencoder's decoder) straight to the backend. A handler may return a replacement output.
_ACTIVE: dict[int, Callable[[Kernel], torch.Tensor | None]] = {}


def _capture_forward(backend: str, module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The attention interface function of `sink_capture:<backend>`: the backend's result, shown to the module's
    handler, which may replace the output."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    original = ALL_ATTENTION_FUNCTIONS.get_interface(backend, eager)
    if original is None:
        raise InputError(f"model: {type(module).__module__} has no eager_attention_forward to run eager attention.")
    output, weights = original(module, query, key, value, attention_mask, **kwargs)
    handler = _ACTIVE.get(id(module))
    if handler is not None:
        scaling = kwargs.get("scaling")
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        replaced = handler(Kernel(query, key, value, attention_mask, scaling, output))
        output = output if replaced is None else replaced
    return output, weights


def _capture_name(backend: str | None) -> str:
    """Register `sink_capture:<backend>` (once) and return the name."""
    backend = backend or "eager"
    name = PREFIX + backend
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, partial(_capture_forward, backend))
        if backend in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[backend])
    return name


@contextmanager
def kernel_handlers(adapter: Adapter, handlers: dict[int, Callable[[Kernel], torch.Tensor | None]]):
    """Route the attention of the layers in `handlers` (by index) through the capture backend, each kernel call shown
    to its layer's handler; the backends are restored on exit, also on error."""
    configs: dict[int, tuple] = {}
    try:
        for index, handler in handlers.items():
            attention = adapter.layers[index].attention
            config = attention.config
            if id(config) not in configs:
                configs[id(config)] = (config, config._attn_implementation_internal)
                config._attn_implementation_internal = _capture_name(config._attn_implementation)
            _ACTIVE[id(attention)] = handler
        yield
    finally:
        for index in handlers:
            _ACTIVE.pop(id(adapter.layers[index].attention), None)
        for config, implementation in configs.values():
            config._attn_implementation_internal = implementation


class LayerCapture:
    """Routes each block's attention through the capture backend and hands its kernel call and gate to
    `on_attention` as soon as the attention module returns (so they are freed before the MLP allocates its own), and
    the block's output tokens to `on_output`."""

    def __init__(
        self,
        adapter: Adapter,
        on_attention: Callable[[int, dict], None],
        on_output: Callable[[int, torch.Tensor], None],
    ):
        self.adapter, self.on_attention, self.on_output = adapter, on_attention, on_output
        self.captured: dict = {}
        self.handles = []
        self.routing = None

    def __enter__(self) -> "LayerCapture":
        try:
            self.routing = kernel_handlers(
                self.adapter, {i: self._keep_kernel for i in range(len(self.adapter.layers))}
            )
            self.routing.__enter__()
            for index, parts in enumerate(self.adapter.layers):
                if parts.gate_proj is not None:
                    self.handles.append(parts.gate_proj.register_forward_hook(self._keep_gate))
                self.handles.append(parts.attention.register_forward_hook(self._attention_done(index)))
                self.handles.append(parts.block.register_forward_hook(self._block_done(index)))
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        if self.routing is not None:
            self.routing.__exit__(*exc)
        self.handles, self.routing = [], None
        self.captured.clear()

    def _keep_kernel(self, kernel: Kernel) -> None:
        self.captured["kernel"] = kernel

    def _keep_gate(self, module, args, output) -> None:
        self.captured["gate"] = output

    def _attention_done(self, index: int):
        def hook(module, args, output):
            captured, self.captured = self.captured, {}
            if "kernel" not in captured:
                raise InputError(
                    f"model: layer {index}'s attention ({type(module).__name__}) did not call the attention-function "
                    "registry, so its kernel cannot be seen; this model is not supported by the diagnostics."
                )
            self.on_attention(index, captured)

        return hook

    def _block_done(self, index: int):
        def hook(module, args, output):
            self.on_output(index, output[0] if isinstance(output, tuple) else output)

        return hook
