"""One head of one kernel call: its slice of the kernel, its attention map and output projection, and the
diagnostics' per-image quantities for it."""

import torch

from ..diagnostics.capture import Adapter, Kernel
from ..diagnostics.diagnose import dense_mask
from ..diagnostics.metrics import HeadProjection, layer_metrics


def head_view(kernel: Kernel, head: int) -> tuple[torch.Tensor, ...]:
    """One head's query, key, value (batch, 1, tokens, d_h), output (batch, tokens, 1, d_h) and bias (or None)."""
    groups = kernel.query.shape[1] // kernel.key.shape[1]  # grouped keys and values serve several query heads
    bias = dense_mask(kernel.mask)
    if bias is not None and bias.shape[1] > 1:
        bias = bias[:, head : head + 1]
    key, value = kernel.key[:, head // groups][:, None], kernel.value[:, head // groups][:, None]
    return kernel.query[:, head : head + 1], key, value, kernel.output[:, :, head : head + 1], bias


def head_attention(query: torch.Tensor, key: torch.Tensor, scaling: float, bias) -> torch.Tensor:
    """softmax(q k^T * scaling + bias) of one head, (batch, N, N) in float32, as the diagnostics build it."""
    logits = (query[:, 0].float() * scaling) @ key[:, 0].float().transpose(-1, -2)
    if bias is not None:
        rows = bias[:, 0]
        logits = logits.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else logits + rows.float()
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)


def head_projection(adapter: Adapter, layer: int, head: int) -> HeadProjection:
    parts = adapter.layers[layer]
    width = parts.output.weight.shape[1] // adapter.num_heads
    weight = parts.output.weight[:, head * width : (head + 1) * width]
    return HeadProjection(weight, parts.gamma, 1)


def head_metrics(adapter, layer, head, kernel, thresholds, valid) -> dict[str, torch.Tensor]:
    """The diagnostics' per-image quantities of one head (sink, event, class, token type, ...), each (batch,)."""
    query, key, value, output, bias = head_view(kernel, head)
    layout = (adapter.num_cls_tokens, adapter.num_prefix_tokens)
    projection = head_projection(adapter, layer, head)
    metrics = layer_metrics(query, key, value, kernel.scaling, projection, layout, thresholds, output, bias, valid, 1)
    return {name: value[:, 0] for name, value in metrics.items()}
