"""The model, its config and its image processor for `sink-models inspect`, from a folder or a Hub id."""

import os

import torch
import transformers

from ..errors import first_line
from .errors import InspectError


def load_model(
    source: str, *, revision: str | None = None, trust_remote_code: bool = False, attn_implementation=None
) -> tuple[torch.nn.Module, object, str]:
    """(model in eval mode, its image processor, the PIL mode its images need). SinkViT checkpoints load with the
    installed classes, never the checkpoint's python files; other code runs only with `trust_remote_code`."""
    from transformers import AutoModel, PreTrainedConfig

    from ..modeling_sink_vit import SinkViTModel

    where = _where(source, revision)
    kwargs = {"revision": revision, "dtype": torch.float32}  # float32 metrics, whatever dtype the weights were saved in
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        # The raw config.json: AutoConfig would refuse SinkViT's config without trust_remote_code.
        raw, _ = PreTrainedConfig.get_config_dict(source, revision=revision)
    except (OSError, ValueError) as error:
        raise InspectError(f"model: {where} could not be loaded: {first_line(error)}") from None
    if raw.get("model_type") == "sink_vit":
        model_class, channels = SinkViTModel, raw.get("num_channels", 3)
    else:
        config = _auto_config(source, revision, trust_remote_code, where)
        model_class, channels = AutoModel, vision_channels(config, where)
        kwargs |= {"config": config, "trust_remote_code": trust_remote_code}
    processor = _image_processor(source, revision, trust_remote_code, where)
    try:
        model = from_pretrained(model_class, source, **kwargs)
    except (OSError, ValueError) as error:
        raise InspectError(f"model: {where} could not be loaded: {first_line(error)}") from None
    return model.eval(), processor, "L" if channels == 1 else "RGB"


def from_pretrained(auto, source: str, **kwargs):
    """`auto.from_pretrained`, or for a checkpoint of a class the auto mapping lacks (a bare `MetaClip2VisionModel`)
    the transformers class its config names: transformers' own code, never the checkpoint's."""
    try:
        return auto.from_pretrained(source, **kwargs)
    except ValueError as error:
        known = named_class(kwargs.get("config"))
        if "Unrecognized configuration class" not in str(error) or known is None:
            raise
        kwargs.pop("trust_remote_code", None)
        return known.from_pretrained(source, **kwargs)


def named_class(config) -> type | None:
    """The transformers model class the config's `architectures` names first, if transformers has one of that name
    (anything else there, a function say, is not a model class: None)."""
    names = getattr(config, "architectures", None) or []
    known = getattr(transformers, names[0], None) if names and isinstance(names[0], str) else None
    return known if isinstance(known, type) and issubclass(known, transformers.PreTrainedModel) else None


def _where(source: str, revision: str | None) -> str:
    local = os.path.isdir(source)
    if not local and (source.startswith((".", "/", "~")) or source.count("/") > 1 or os.path.exists(source)):
        raise InspectError(f"model: {source!r} is not a folder; allowed: a model folder or a Hub id (org/name).")
    if local and revision is not None:
        raise InspectError(f"revision: {revision!r} given for the local folder {source!r}; it applies to Hub ids only.")
    where = repr(source) + ("" if revision is None else f" at revision {revision!r}")
    return where if local else f"{where} (no local folder of that name; as a Hub id)"


def _auto_config(source: str, revision: str | None, trust_remote_code: bool, where: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise InspectError(
                f"model: {where} runs its own code (config.json's auto_map); pass --trust-remote-code "
                "(trust_remote_code=True) if you trust it."
            ) from None
        raise InspectError(f"model: {where} could not be loaded: {first_line(error)}") from None
    except OSError as error:
        raise InspectError(f"model: {where} could not be loaded: {first_line(error)}") from None


def vision_channels(config, where: str) -> int:
    """The image channels of a config with a vision part (itself, or `vision_config` for dual encoders)."""
    vision = getattr(config, "vision_config", None) or config
    if not any(hasattr(vision, name) for name in ("image_size", "num_channels")):
        raise InspectError(
            f"model: {where} is a {config.model_type} model without a vision encoder (text or audio); "
            "the sink diagnostics need a vision transformer."
        )
    return getattr(vision, "num_channels", 3)


def _image_processor(source: str, revision: str | None, trust_remote_code: bool, where: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise InspectError(
            f"model: {where} has no usable image processor (preprocessor_config.json): {first_line(error, 160)}"
        ) from None
