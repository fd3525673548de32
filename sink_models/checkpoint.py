"""Save a model as a self-contained Hub folder: config with auto_map, the two remote-code files, weights, processor."""

import os
from pathlib import Path

from transformers import ViTImageProcessorPil

from .configuration_sink_vit import as_pair
from .errors import InputError
from .files import atomic_folder, umask
from .modeling_sink_vit import SinkViTPreTrainedModel


def default_image_processor(config) -> ViTImageProcessorPil:
    """Resize to `config.image_size` and normalise with mean = std = 0.5 per channel (transformers' ViT default)."""
    height, width = as_pair(config.image_size)
    channels = config.num_channels
    return ViTImageProcessorPil(
        size={"height": height, "width": width}, image_mean=[0.5] * channels, image_std=[0.5] * channels
    )


def save_checkpoint(
    model: SinkViTPreTrainedModel, folder: str | os.PathLike, image_processor=None, state_dict: dict | None = None
) -> Path:
    """Write `model` (and its image processor, the default one if None) to `folder`, atomically; `state_dict`, if
    given, holds its weights (a sharded model's, gathered).

    The folder loads with `AutoModel` / `AutoModelForImageClassification.from_pretrained(folder,
    trust_remote_code=True)` and with `pipeline("image-classification", model=folder, trust_remote_code=True)`.
    Weights are safetensors only. An existing folder is replaced only once the new one is complete.
    """
    if not isinstance(model, SinkViTPreTrainedModel):
        raise TypeError(f"model: expected a SinkViT model, got {type(model).__name__}.")
    source = model.config.converted_from
    if image_processor is None and source:
        # converted_from is a Hub id or folder when the stock model was loaded from one, else only its class name.
        named = "/" in source or os.path.isdir(source)
        where = repr(source) if named else f"<the Hub id or folder of that {source} checkpoint>"
        raise InputError(
            f"image_processor: required for a model converted from {source!r}; pass its own processor (e.g. "
            f"AutoImageProcessor.from_pretrained({where})): the default one would preprocess its inputs wrongly."
        )
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True, state_dict=state_dict)
        (image_processor or default_image_processor(model.config)).save_pretrained(staging)
        for path in staging.iterdir():  # the weights come owner-only from their writer; every file alike
            path.chmod(0o666 & ~umask())
    return Path(folder)
