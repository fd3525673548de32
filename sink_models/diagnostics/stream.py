"""`diagnose`: stream batches through a model and measure the sinks of every layer and head."""

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .capture import LayerCapture, adapter_for
from .metrics import HeadProjection, Thresholds, gate_metrics, layer_metrics, token_norm_metrics
from .report import Accumulator, SinkReport


def diagnose(
    model: nn.Module,
    batches: Iterable,
    *,
    thresholds: Thresholds | None = None,
    max_images: int | None = None,
    accelerator=None,
    attention_image: int = 0,
) -> SinkReport:
    """Sink diagnostics (SCIENCE.md sections 2-3) of `model` on the images of `batches`.

    `batches` yields dicts with `pixel_values` or bare `(batch, channels, height, width)` tensors. The model runs
    with the attention backend it has (sdpa included); one layer's attention maps are held at a time. Under
    accelerate, give each process its shard of the batches and the `accelerator`: the report is the one a single
    process would give on all images (`max_images` then counts the images of each process). The per-head inflow
    maps of image number `attention_image` (of the first process) are kept for `SinkReport.plot`.
    """
    thresholds = thresholds or Thresholds()
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images: got {max_images!r}; allowed: None (all images) or a positive int.")
    adapter = adapter_for(model)
    heads, device = adapter.num_heads, next(model.parameters()).device
    projections = [HeadProjection(p.attention.o_proj.weight.to(device), p.gamma, heads) for p in adapter.layers]
    acc = Accumulator(len(adapter.layers), heads)
    kept: dict = {}

    def on_attention(index: int, captured: dict) -> None:
        q, k, v = (captured[name].unflatten(-1, (heads, -1)) for name in ("q_proj", "k_proj", "v_proj"))
        gates = captured.get("gate_proj")
        batch = q.shape[0]
        # A quarter of the batch at a time: the attention maps held stay well under one layer's worth.
        step = -(-batch // 4)
        for start in range(0, batch, step):
            part = slice(start, start + step)
            metrics = layer_metrics(
                q[part],
                k[part],
                v[part],
                adapter.layers[index].attention.scaling,
                projections[index],
                adapter.num_prefix_tokens,
                thresholds,
            )
            gate = None
            if gates is not None:
                gate = gate_metrics(torch.sigmoid(gates[part]), heads, thresholds.gate_closed)
            acc.add_layer(index, acc.images + start, metrics, gate)
            acc.add_cls_sinks(index, metrics["cls_inflow"], thresholds.cls_sink_eps)
            local = attention_image - acc.images - start
            if 0 <= local < len(metrics["sink"]):
                kept.setdefault("inflow", []).append(metrics["inflow"][local].float().cpu().tolist())

    def on_output(index: int, tokens: torch.Tensor) -> None:
        acc.add_token_norms(index, *token_norm_metrics(tokens))

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), LayerCapture(adapter, on_attention, on_output):
            for batch in batches:
                pixel_values = batch["pixel_values"] if isinstance(batch, Mapping) else batch
                if max_images is not None:
                    pixel_values = pixel_values[: max_images - acc.images]
                if len(pixel_values) == 0:
                    continue
                model(pixel_values=pixel_values.to(device))
                if "grid" not in kept:
                    height, width = pixel_values.shape[-2:]
                    kept["grid"] = [height // adapter.patch_size[0], width // adapter.patch_size[1]]
                acc.images += len(pixel_values)
                if max_images is not None and acc.images >= max_images:
                    break
    finally:
        model.train(training)

    total = acc.images
    if accelerator is not None and accelerator.num_processes > 1:
        total = int(accelerator.reduce(torch.tensor([acc.images], device=accelerator.device), "sum").item())
    if total == 0:
        raise ValueError("batches: yielded no images; nothing to diagnose.")
    acc.reduce(accelerator)
    attention = _attention_maps(kept, attention_image, adapter, accelerator)
    return SinkReport.from_accumulator(acc, thresholds, _model_info(model, adapter), attention)


def _attention_maps(kept: dict, image: int, adapter, accelerator) -> dict | None:
    maps = {"image": image, "grid": kept.get("grid"), "num_prefix_tokens": adapter.num_prefix_tokens}
    maps["inflow"] = kept.get("inflow")
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        maps = gather_object([maps])[0]
    return maps if maps["inflow"] is not None else None


def _model_info(model: nn.Module, adapter) -> dict:
    config = model.config
    return {
        "class": type(model).__name__,
        "model_type": config.model_type,
        "name_or_path": config.name_or_path,
        "layers": len(adapter.layers),
        "heads": adapter.num_heads,
        "num_prefix_tokens": adapter.num_prefix_tokens,
        "attn_implementation": config._attn_implementation,
    }
