"""`diagnose`: stream batches through a model and measure the sinks of every layer and head."""

from collections.abc import Callable, Iterable, Mapping

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
    on_outputs: Callable[[object, object, int], None] | None = None,
) -> SinkReport:
    """Sink diagnostics (SCIENCE.md sections 2-3) of `model` on the images of `batches`.

    `batches` yields dicts with `pixel_values` or bare `(batch, channels, height, width)` tensors. The model runs
    with the attention backend it has (sdpa included); one layer's attention maps are held at a time.

    Under accelerate, give each process its own shard of the batches (without the padding that `even_batches`
    adds) and the `accelerator`: the report is the one a single process gives on all the images, process 0's
    first. `max_images` then counts each process's images. The per-head inflow maps kept for `SinkReport.plot`
    are those of image number `attention_image` of the first process that has that many images.

    `on_outputs(batch, outputs, count)` receives each batch, the model's outputs and the number of its images that
    were used (fewer than the batch at `max_images`): accuracy and diagnostics then share one forward pass.
    """
    thresholds = Thresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds: got {type(thresholds).__name__}; allowed: None or a Thresholds.")
    if max_images is not None and (type(max_images) is not int or max_images < 1):
        raise ValueError(f"max_images: got {max_images!r}; allowed: None (all images) or a positive int.")
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    adapter = adapter_for(model)
    heads, device = adapter.num_heads, next(model.parameters()).device
    acc = Accumulator(len(adapter.layers), heads)
    kept: dict = {}

    def on_attention(index: int, captured: dict) -> None:
        q, k, v = (captured[name].unflatten(-1, (heads, -1)) for name in ("q_proj", "k_proj", "v_proj"))
        output = captured.get("o_proj")  # o = A v, captured for models without a gate
        output = None if output is None else output.unflatten(-1, (heads, -1))
        gates = captured.get("gate_proj")
        parts = adapter.layers[index]
        # Made anew for each batch (0.1 ms a layer at ViT-Tiny width, ~6 ms at ViT-L's, small beside the forward):
        # kept for every layer, they would stay in memory throughout, about as much as one layer's attention maps.
        projection = HeadProjection(parts.attention.o_proj.weight.to(device), parts.gamma, heads)
        # At most a quarter of the layer's attention maps at a time: well under one layer's worth.
        metrics = layer_metrics(
            q, k, v, parts.attention.scaling, projection, adapter.num_prefix_tokens, thresholds, output, chunks=4
        )
        gate = None if gates is None else gate_metrics(torch.sigmoid(gates), heads, thresholds.gate_closed)
        acc.add_layer(index, acc.images, metrics, gate)
        acc.add_cls_sinks(index, metrics["cls_inflow"], thresholds.cls_sink_eps)
        local = attention_image - acc.images
        if 0 <= local < len(metrics["sink"]):
            kept.setdefault("inflow", []).append(metrics["inflow"][local].float().cpu().tolist())

    def on_output(index: int, tokens: torch.Tensor) -> None:
        acc.add_token_norms(index, *token_norm_metrics(tokens))

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), LayerCapture(adapter, on_attention, on_output):
            for batch in batches:
                pixel_values = _pixel_values(batch, model.config.num_channels, adapter.patch_size)
                if max_images is not None:
                    pixel_values = pixel_values[: max_images - acc.images]
                if len(pixel_values) == 0:
                    continue
                if acc.images <= attention_image < acc.images + len(pixel_values):
                    (height, width), (ph, pw) = pixel_values.shape[-2:], adapter.patch_size
                    kept["grid"] = [height // ph, width // pw]
                outputs = model(pixel_values=pixel_values.to(device))
                if on_outputs is not None:
                    on_outputs(batch, outputs, len(pixel_values))
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
    attention = None
    if "inflow" in kept:
        attention = {"image": attention_image, "num_prefix_tokens": adapter.num_prefix_tokens, **kept}
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        attention = next((maps for maps in gather_object([attention]) if maps is not None), None)
    return SinkReport.from_accumulator(acc, thresholds, _model_info(model, adapter), attention)


def _pixel_values(batch, channels: int, patch: tuple[int, int]) -> torch.Tensor:
    """The batch's images, checked: a (batch, channels, height, width) tensor whose sides are patch multiples."""
    if isinstance(batch, Mapping):
        if "pixel_values" not in batch:
            raise ValueError(f"batches: a dict batch needs a 'pixel_values' entry; got keys {sorted(batch)}.")
        batch = batch["pixel_values"]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batches: expected torch tensors or dicts of them, got {type(batch).__name__}.")
    if batch.ndim != 4 or batch.shape[1] != channels:
        raise ValueError(f"pixel_values: expected (batch, {channels}, height, width), got shape {tuple(batch.shape)}.")
    if batch.shape[2] % patch[0] or batch.shape[3] % patch[1]:
        raise ValueError(
            f"pixel_values: image size {batch.shape[2]}x{batch.shape[3]} is not a multiple of the patch size "
            f"{patch[0]}x{patch[1]}."
        )
    return batch


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
