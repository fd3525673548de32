"""The held-out means the edits substitute: each head's mean sink value, each layer's mean register tokens."""

import torch
from torch import nn

from ..diagnostics.capture import Kernel, kernel_handlers
from ..diagnostics.diagnose import forward_options, valid_tokens
from .heads import head_metrics, head_view


def held_out_means(model, adapter, data, heads, thresholds, accelerator, sinks: bool, registers: bool) -> dict:
    """Each head's mean sink value v_s over its sink events (`sinks`) and each layer's mean register tokens at its
    input (`registers`), on the held-out batches (float64 sums, reduced over processes)."""
    sums: dict = {}
    state: dict = {"valid": None}

    def keep_sinks(layer):
        def handler(kernel: Kernel) -> None:
            for h in (h for at, h in heads if at == layer):
                metrics = head_metrics(adapter, layer, h, kernel, thresholds, state["valid"])
                event = metrics["event"]
                value = head_view(kernel, h)[2][:, 0]  # batch, N, d_h
                picked = value[torch.arange(len(value), device=value.device), metrics["sink"]][event]
                total, count = sums["sink", layer, h]
                sums["sink", layer, h] = (total + picked.double().sum(0).cpu(), count + int(event.sum()))

        return handler

    def keep_registers(layer):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            registers = hidden[:, adapter.num_cls_tokens : adapter.num_prefix_tokens].double()
            total, count = sums["register", layer]
            sums["register", layer] = (total + registers.sum(0).cpu(), count + len(hidden))

        return hook

    # Every key from the start, in one order: each process then reduces the same tensors, even one without events.
    width = adapter.layers[0].output.weight.shape[1] // adapter.num_heads
    for layer, head in heads if sinks else ():
        sums["sink", layer, head] = (torch.zeros(width, dtype=torch.float64), 0)
    for layer, parts in enumerate(adapter.layers if registers and adapter.num_register_tokens else ()):
        channels = parts.output.weight.shape[0]
        sums["register", layer] = (torch.zeros(adapter.num_register_tokens, channels, dtype=torch.float64), 0)
    handles = []
    if registers and adapter.num_register_tokens:
        for layer, parts in enumerate(adapter.layers):
            handles.append(parts.block.register_forward_pre_hook(keep_registers(layer), with_kwargs=True))
    try:
        layers = {layer for layer, _ in heads}
        handlers = {layer: keep_sinks(layer) for layer in layers} if sinks else {}
        with torch.no_grad(), kernel_handlers(adapter, handlers):
            for inputs, _ in data:
                state["valid"] = valid_tokens(inputs, adapter)
                adapter.forward(**inputs_on(inputs, model), **forward_options(inputs, adapter))
    finally:
        for handle in handles:
            handle.remove()
    return _reduce_means(sums, accelerator)


def _reduce_means(sums: dict, accelerator) -> dict:
    means = {}
    for key, (total, count) in sums.items():
        if accelerator is not None and accelerator.num_processes > 1:
            device = accelerator.device
            count = int(accelerator.reduce(torch.tensor([count], device=device), "sum").item())
            total = accelerator.reduce(total.to(device), "sum").cpu()
        means[key] = (total / count).float() if count else None
    return means


def inputs_on(inputs: dict, model: nn.Module) -> dict:
    device = next(model.parameters()).device
    return {name: value.to(device) for name, value in inputs.items()}
