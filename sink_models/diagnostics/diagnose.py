"""`diagnose`: stream batches through a model and measure the sinks of every layer and head."""

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import InputError
from .capture import Adapter, LayerCapture, adapter_for
from .metrics import Grid, HeadProjection, Thresholds, gate_metrics, layer_metrics, token_norm_metrics
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
    grid: Grid | None = None,
) -> SinkReport:
    """Sink diagnostics (docs/science.md sections 2-3) of `model` on the images of `batches`.

    `model` is a SinkViT or a stock vision encoder of a supported family (`sink_models.diagnostics.SUPPORTED`), base,
    with a head, or a dual encoder (CLIP, SigLIP, ...), whose `vision_model` is diagnosed. `batches` yields the image
    processor's output (dicts with `pixel_values`, and for SigLIP2 `pixel_attention_mask` and `spatial_shapes`) or bare
    `(batch, channels, height, width)` tensors. The model runs with the attention backend it has (sdpa included),
    seen through the attention interface, and gives the outputs it gives uninstrumented; one layer's attention maps
    are held at a time.

    Under accelerate, give each process its own shard of the batches (without the padding that `even_batches`
    adds) and the `accelerator`: the report is the one a single process gives on all the images, process 0's
    first. `max_images` then counts each process's images. The per-head inflow maps kept for `SinkReport.plot`
    are those of image number `attention_image` of the first process that has that many images.

    `on_outputs(batch, outputs, count)` receives each batch, the model's outputs and the number of its images that
    were used (fewer than the batch at `max_images`): accuracy and diagnostics then share one forward pass.

    With a `grid` (a `Grid`), the summary's `sensitivity` counts the events under each of its choices of the rule.
    """
    thresholds = Thresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds: got {type(thresholds).__name__}; allowed: None or a Thresholds.")
    if grid is not None and not isinstance(grid, Grid):
        raise TypeError(f"grid: got {type(grid).__name__}; allowed: None or a Grid.")
    if max_images is not None and (type(max_images) is not int or max_images < 1):
        raise InputError(f"max_images: got {max_images!r}; allowed: None (all images) or a positive int.")
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    adapter = adapter_for(model)
    stream = _Stream(adapter, thresholds, attention_image, next(model.parameters()).device, grid)
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), LayerCapture(adapter, stream.on_attention, stream.on_output), all_patches_kept(adapter):
            stream.run(batches, max_images, on_outputs)
    finally:
        model.train(training)

    acc, kept = stream.acc, stream.kept
    total = acc.images
    if accelerator is not None and accelerator.num_processes > 1:
        total = int(accelerator.reduce(torch.tensor([acc.images], device=accelerator.device), "sum").item())
    if total == 0:
        raise InputError("batches: yielded no images; nothing to diagnose.")
    acc.reduce(accelerator)
    attention = None
    if "inflow" in kept:
        layout = {"num_cls_tokens": adapter.num_cls_tokens, "num_prefix_tokens": adapter.num_prefix_tokens}
        attention = {"image": attention_image, **layout, **kept}
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        attention = next((maps for maps in gather_object([attention]) if maps is not None), None)
    return SinkReport.from_accumulator(acc, thresholds, _model_info(model, adapter), attention)


class _Stream:
    """Runs the batches and measures each layer as its attention returns: the running sums, the events, and the
    inflow maps of one image."""

    def __init__(self, adapter: Adapter, thresholds: Thresholds, attention_image: int, device: torch.device, grid):
        self.adapter, self.thresholds, self.attention_image, self.device = adapter, thresholds, attention_image, device
        self.acc = Accumulator(len(adapter.layers), adapter.num_heads, grid)
        self.kept: dict = {}
        self.valid = None  # the batch's valid tokens, for families that pad

    def run(self, batches: Iterable, max_images: int | None, on_outputs) -> None:
        adapter, acc = self.adapter, self.acc
        for batch in batches:
            inputs = model_inputs(batch, adapter)
            if max_images is not None:
                inputs = {name: value[: max_images - acc.images] for name, value in inputs.items()}
            count = len(inputs["pixel_values"])
            if count == 0:
                continue
            inputs = {name: value.to(self.device) for name, value in inputs.items()}
            self.valid = valid_tokens(inputs, adapter)
            if acc.images <= self.attention_image < acc.images + count:
                self.kept["grid"] = _grid(inputs, adapter, self.attention_image - acc.images)
            outputs = adapter.forward(**inputs, **forward_options(inputs, adapter))
            if on_outputs is not None:
                on_outputs(batch, outputs, count)
            acc.images += count
            if max_images is not None and acc.images >= max_images:
                break

    def on_attention(self, index: int, captured: dict) -> None:
        adapter, thresholds, valid, heads = self.adapter, self.thresholds, self.valid, self.adapter.num_heads
        parts = adapter.layers[index]
        # Made anew for each batch (0.1 ms a layer at ViT-Tiny width, ~6 ms at ViT-L's, small beside the forward):
        # kept for every layer, they would stay in memory throughout, about as much as one layer's attention maps.
        projection = HeadProjection(parts.output.weight.to(self.device), parts.gamma, heads)
        # At most a quarter of the layer's attention maps at a time: well under one layer's worth.
        kernel = captured["kernel"]
        metrics = layer_metrics(
            kernel.query,
            kernel.key,
            kernel.value,
            kernel.scaling,
            projection,
            (adapter.num_cls_tokens, adapter.num_prefix_tokens),
            thresholds,
            kernel.output,
            bias=dense_mask(kernel.mask),
            valid=valid,
            chunks=4,
            grid=self.acc.grid,
        )
        gates = captured.get("gate")
        gate = None if gates is None else gate_metrics(torch.sigmoid(gates), heads, thresholds.gate_closed, valid)
        self.acc.add_layer(index, self.acc.images, metrics, gate)
        self.acc.add_cls_sinks(index, metrics["cls_inflow"], thresholds.cls_sink_eps)
        local = self.attention_image - self.acc.images
        if 0 <= local < len(metrics["sink"]):
            inflow = metrics["inflow"][local]
            if valid is not None:
                inflow = inflow[:, valid[local]]
            self.kept.setdefault("inflow", []).append(inflow.float().cpu().tolist())

    def on_output(self, index: int, tokens: torch.Tensor) -> None:
        self.acc.add_token_norms(index, *token_norm_metrics(tokens, self.valid))


def model_inputs(batch, adapter: Adapter) -> dict[str, torch.Tensor]:
    """The batch's model inputs, checked: images (batch, channels, height, width) whose sides are patch multiples, or,
    for a family that pads (SigLIP2), the processor's patches with their `pixel_attention_mask` and `spatial_shapes`."""
    names = ("pixel_values", "pixel_attention_mask", "spatial_shapes") if adapter.family.padded else ("pixel_values",)
    if isinstance(batch, Mapping):
        missing = [name for name in names if name not in batch]
        if missing:
            needed = " and ".join(map(repr, missing))
            raise InputError(f"batches: a dict batch needs {needed}; got keys {sorted(batch)}.")
        inputs = {name: batch[name] for name in names}
    elif adapter.family.padded:
        raise TypeError(f"batches: {adapter.family.name} needs dicts with {', '.join(names)} (its processor's output).")
    else:
        inputs = {"pixel_values": batch}
    for name, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"batches: expected torch tensors or dicts of them, got {type(value).__name__} ({name}).")
    if adapter.family.padded:
        return inputs
    pixels, patch, channels = inputs["pixel_values"], adapter.patch_size, adapter.num_channels
    if pixels.ndim != 4 or pixels.shape[1] != channels:
        raise InputError(f"pixel_values: expected (batch, {channels}, height, width), got shape {tuple(pixels.shape)}.")
    if pixels.shape[2] % patch[0] or pixels.shape[3] % patch[1]:
        raise InputError(
            f"pixel_values: image size {pixels.shape[2]}x{pixels.shape[3]} is not a multiple of the patch size "
            f"{patch[0]}x{patch[1]}."
        )
    return inputs


def valid_tokens(inputs: dict, adapter: Adapter) -> torch.Tensor | None:
    """(batch, tokens) True for the tokens that count, for a family that pads; None when every token counts."""
    if not adapter.family.padded:
        return None
    patches = inputs["pixel_attention_mask"].bool()
    prefix = patches.new_ones(len(patches), adapter.num_prefix_tokens)
    return torch.cat([prefix, patches], dim=1)


def _grid(inputs: dict, adapter: Adapter, image: int) -> list[int]:
    """The patch grid (rows, columns) of one image of the batch."""
    if adapter.family.padded:
        return [int(side) for side in inputs["spatial_shapes"][image]]
    (height, width), (ph, pw) = inputs["pixel_values"].shape[-2:], adapter.patch_size
    return [height // ph, width // pw]


def forward_options(inputs: dict, adapter: Adapter) -> dict:
    """Keyword arguments of the forward beyond the inputs: a masked autoencoder keeps its patches in order."""
    if not adapter.family.identity_masking:
        return {}
    pixels, (ph, pw) = inputs["pixel_values"], adapter.patch_size
    patches = (pixels.shape[-2] // ph) * (pixels.shape[-1] // pw)
    return {"noise": torch.arange(patches, device=pixels.device, dtype=torch.float32).expand(len(pixels), -1)}


def run_forward(adapter: Adapter, inputs: dict) -> dict:
    """Final tokens and logits (None without a head) of the vision forward. A classifier's final tokens are its base
    model's first output (last_hidden_state), read by a hook."""
    kept = {}
    classifier = type(adapter.forward).__name__.endswith("ForImageClassification")
    handle = None
    if classifier:
        handle = adapter.forward.base_model.register_forward_hook(lambda m, a, o: kept.__setitem__("tokens", o[0]))
    try:
        outputs = adapter.forward(**inputs, **forward_options(inputs, adapter))
    finally:
        if handle is not None:
            handle.remove()
    tokens = kept.get("tokens")
    if tokens is None:
        tokens = outputs["last_hidden_state"] if "last_hidden_state" in outputs else outputs[0]
    return {"tokens": tokens.float(), "logits": outputs.get("logits") if hasattr(outputs, "get") else None}


@contextmanager
def all_patches_kept(adapter: Adapter):
    """A masked autoencoder's `mask_ratio` set to 0 for the duration: it sees every patch, as at inference."""
    config = adapter.forward.config
    if not adapter.family.identity_masking or config.mask_ratio == 0:
        yield
        return
    ratio, config.mask_ratio = config.mask_ratio, 0.0
    try:
        yield
    finally:
        config.mask_ratio = ratio


def dense_mask(mask) -> torch.Tensor | None:
    """The kernel's mask or logit bias, which must be a tensor (or None) for the maps to be rebuilt exactly."""
    if mask is None or isinstance(mask, torch.Tensor):
        return mask
    # No supported family builds a flex BlockMask in transformers 5.24 (those with masks do not support flex).
    raise InputError(
        f"model: its attention got a {type(mask).__name__} mask, which the diagnostics cannot rebuild; load the model "
        "with attn_implementation='sdpa' or 'eager'."
    )


def _model_info(model: nn.Module, adapter) -> dict:
    config = model.config
    return {
        "class": type(model).__name__,
        "model_type": config.model_type,
        "name_or_path": config.name_or_path,
        "layers": len(adapter.layers),
        "heads": adapter.num_heads,
        "family": adapter.family.name,
        "num_cls_tokens": adapter.num_cls_tokens,
        "num_register_tokens": adapter.num_register_tokens,
        "num_prefix_tokens": adapter.num_prefix_tokens,
        "attn_implementation": adapter.layers[0].attention.config._attn_implementation,
    }
