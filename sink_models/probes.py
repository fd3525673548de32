"""Dense linear probes on frozen patch tokens (SCIENCE.md section 8): the paper's headline metric for registers and
gates. `patch_features` reads the patch tokens of any model the diagnostics support; `linear_probe` trains a per-patch
linear classifier on them and reports mIoU and accuracy on held-out patches (and pixels, when pixel maps are given)."""

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .diagnostics.capture import Adapter, adapter_for
from .diagnostics.stream import all_patches_kept, model_inputs
from .interventions.measure import run_forward


@torch.no_grad()
def patch_features(model: nn.Module, batches: Iterable, layer: int | None = None) -> torch.Tensor:
    """(images, patches, channels) float32 patch tokens of a frozen model, in raster order: the final output
    (`last_hidden_state[:, num_prefix_tokens:]`, normed as the model norms it), or with `layer` the output of that
    block (negative counts from the end) under a parameter-free LayerNorm. A final norm's affine part is a per-channel
    scale and shift, which a linear probe absorbs, so standardizing each token is all an intermediate layer needs.
    `batches` yields images (batch, channels, height, width) or processor outputs, as for `diagnose`."""
    adapter = adapter_for(model)  # one line for a model without a supported token layout
    if adapter.family.padded:
        raise ValueError(f"model: {adapter.family.name} pads its patches per image; dense probes need a fixed grid.")
    if layer is not None and not -len(adapter.layers) <= layer < len(adapter.layers):
        raise ValueError(
            f"layer: got {layer}; allowed: None (the final output) or a block index in [0, {len(adapter.layers)})."
        )
    features, training = [], model.training
    model.eval()
    try:
        for batch in batches:
            inputs = model_inputs(batch, adapter)
            features.append(_patch_tokens(adapter, inputs, layer).float().cpu())
    finally:
        model.train(training)
    if not features:
        raise ValueError("batches: yielded no images; no features to probe.")
    return torch.cat(features)


def _patch_tokens(adapter: Adapter, inputs: dict, layer: int | None) -> torch.Tensor:
    kept, handle = {}, None
    if layer is not None:
        block = adapter.layers[layer].block
        handle = block.register_forward_hook(
            lambda m, a, o: kept.__setitem__("tokens", o[0] if isinstance(o, tuple) else o)
        )
    try:
        with all_patches_kept(adapter):
            tokens = run_forward(adapter.forward, adapter, inputs)["tokens"]
    finally:
        if handle is not None:
            handle.remove()
    if layer is not None:
        tokens = F.layer_norm(kept["tokens"].float(), kept["tokens"].shape[-1:])
    (height, width), (ph, pw) = inputs["pixel_values"].shape[-2:], adapter.patch_size
    patches = (height // ph) * (width // pw)
    if tokens.ndim != 3 or tokens.shape[1] != adapter.num_prefix_tokens + patches:
        raise ValueError(
            f"model: its output {tuple(tokens.shape)} holds no {adapter.num_prefix_tokens} prefix + {patches} patch "
            "tokens (a pooled-only output has no patch tokens to probe)."
        )
    return tokens[:, adapter.num_prefix_tokens :]


@dataclass
class ProbeResult:
    """Held-out scores of a linear probe. mIoU is the mean IoU over the classes present (in the labels or the
    predictions), background (class 0) included as in Pascal VOC; `foreground_miou` leaves it out. `iou` maps each
    present class to its IoU. The `pixel_` fields are at pixel resolution (bilinear-upsampled logits), when given."""

    miou: float
    foreground_miou: float
    accuracy: float
    iou: dict[int, float]
    pixel_miou: float | None = None
    pixel_foreground_miou: float | None = None
    pixel_accuracy: float | None = None
    pixel_iou: dict[int, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def confusion(labels: torch.Tensor, predictions: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts, rows the true class, columns the predicted one."""
    index = labels.reshape(-1).long() * classes + predictions.reshape(-1).long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def scores(matrix: torch.Tensor) -> tuple[float, float, float, dict[int, float]]:
    """(mIoU, foreground mIoU, accuracy, per-class IoU) of a confusion matrix; IoU = TP / (TP + FP + FN) over the
    classes whose union is not empty."""
    matrix = matrix.double()
    tp = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = {c: float(tp[c] / union[c]) for c in range(len(matrix)) if union[c] > 0}
    foreground = [v for c, v in iou.items() if c != 0]
    return (
        float(np.mean(list(iou.values()))),
        float(np.mean(foreground)) if foreground else float("nan"),
        float(tp.sum() / matrix.sum()),
        iou,
    )


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    classes: int,
    seed: int = 0,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    eval_pixel_labels: torch.Tensor | None = None,
) -> ProbeResult:
    """Trains a per-patch linear classifier (AdamW, cross-entropy) on the training patches and scores it on the
    held-out ones. Features are (images, patches, channels); labels (images, rows, columns) in [0, classes), with
    rows x columns = patches; `eval_pixel_labels` (images, height, width) adds scores at pixel resolution.
    `batch_size` None trains full-batch; `seed` fixes the minibatch order (the weights start at zero)."""
    train_features, eval_features = (
        _as_tensor(train_features, "train_features"),
        _as_tensor(eval_features, "eval_features"),
    )
    train_labels, eval_labels = _as_tensor(train_labels, "train_labels"), _as_tensor(eval_labels, "eval_labels")
    _check(train_features, train_labels, "train", classes)
    _check(eval_features, eval_labels, "eval", classes)
    if train_features.shape[-1] != eval_features.shape[-1]:
        raise ValueError(
            f"eval_features: {eval_features.shape[-1]} channels; the training features have {train_features.shape[-1]}."
        )
    x, y = train_features.reshape(-1, train_features.shape[-1]).float(), train_labels.reshape(-1).long()
    # Standardize with the training statistics (the BatchNorm before DINOv2's linear segmentation head): tokens with
    # a few huge channels, the signature of sinks, would otherwise set the step size for all.
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    head = nn.Linear(x.shape[-1], classes)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    x = (x - mean) / std
    size = batch_size or len(x)
    with torch.enable_grad():
        for _ in range(epochs):
            for rows in torch.randperm(len(x), generator=generator).split(size):
                loss = F.cross_entropy(head(x[rows]), y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        logits = head((eval_features.float() - mean) / std)  # (images, patches, classes)
    result = ProbeResult(*scores(confusion(eval_labels, logits.argmax(-1), classes)))
    if eval_pixel_labels is not None:
        pixel = _as_tensor(eval_pixel_labels, "eval_pixel_labels")
        if pixel.ndim != 3 or len(pixel) != len(eval_labels):
            raise ValueError(
                f"eval_pixel_labels: expected ({len(eval_labels)}, height, width), got {tuple(pixel.shape)}."
            )
        _check_range(pixel, "eval_pixel_labels", classes)
        grid = logits.reshape(*eval_labels.shape, classes).permute(0, 3, 1, 2)
        upsampled = F.interpolate(grid, size=pixel.shape[-2:], mode="bilinear", align_corners=False)
        miou, foreground, accuracy, iou = scores(confusion(pixel, upsampled.argmax(1), classes))
        result.pixel_miou, result.pixel_foreground_miou, result.pixel_accuracy, result.pixel_iou = (
            miou,
            foreground,
            accuracy,
            iou,
        )
    return result


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or numpy array, got {type(value).__name__}.")
    return value


def _check(features: torch.Tensor, labels: torch.Tensor, split: str, classes: int) -> None:
    if features.ndim != 3:
        raise ValueError(f"{split}_features: expected (images, patches, channels), got {tuple(features.shape)}.")
    if labels.ndim != 3 or len(labels) != len(features) or labels.shape[1] * labels.shape[2] != features.shape[1]:
        raise ValueError(
            f"{split}_labels: expected ({len(features)}, rows, columns) with rows x columns = {features.shape[1]} "
            f"patches, got {tuple(labels.shape)}."
        )
    _check_range(labels, f"{split}_labels", classes)


def _check_range(labels: torch.Tensor, name: str, classes: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class ids, got {labels.dtype}.")
    if len(labels.reshape(-1)) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"{name}: class ids in [{int(labels.min())}, {int(labels.max())}], outside the label set [0, {classes}); "
            "the label sets do not match."
        )
