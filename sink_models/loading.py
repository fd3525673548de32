"""The one way to load a model, its config and its image processor from a folder or a Hub id: a checked config,
checked weights (safetensors only, all of the model's) and the remote-code rule. Used by evaluation and inspect."""

import difflib
import json
import os

import torch
import transformers
from huggingface_hub.errors import StrictDataclassError

from .errors import InputError, first_line

# What reading a config.json can raise: a malformed file, a field of the wrong type (transformers' strict
# dataclasses), a nesting deep enough to exhaust the JSON parser's recursion.
CONFIG_ERRORS = (OSError, ValueError, TypeError, RecursionError, StrictDataclassError)
DEFAULT_ATTENTION = "sdpa"  # never the repo's config.json choice: a Hub kernel name there fetches and runs its code


def load_model(
    source: str, *, revision: str | None = None, trust_remote_code: bool = False, attn_implementation=None
) -> tuple[torch.nn.Module, object, str]:
    """(model in eval mode, its image processor, the PIL mode its images need). SinkViT checkpoints load with the
    installed classes, never the checkpoint's python files; other code runs only with `trust_remote_code`. Weights are
    safetensors only and must be the model's, all of them (`from_pretrained`)."""
    from transformers import AutoModel

    from .modeling_sink_vit import SinkViTModel

    where = source_where(source, revision)
    # float32 metrics, whatever dtype the weights were saved in; the attention function is ours to choose
    kwargs = {
        "revision": revision,
        "dtype": torch.float32,
        "attn_implementation": attn_implementation or DEFAULT_ATTENTION,
    }
    raw = read_config(source, revision, where)
    if raw.get("model_type") == "sink_vit":
        model_class, channels = SinkViTModel, raw.get("num_channels", 3)
    else:
        config = auto_config(source, revision, trust_remote_code, where)
        model_class, channels = AutoModel, vision_channels(config, where)
        kwargs |= {"config": config, "trust_remote_code": trust_remote_code}
    check_weight_files(source, revision, raw, where)
    processor = _image_processor(source, revision, trust_remote_code, where)
    try:
        model = from_pretrained(model_class, source, **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(f"model: {where} could not be loaded: {first_line(error)}") from None
    return model.eval(), processor, "L" if channels == 1 else "RGB"


def from_pretrained(auto, source: str, **kwargs):
    """`auto.from_pretrained` from safetensors only, or for a checkpoint of a class the auto mapping lacks (a bare
    `MetaClip2VisionModel`) the transformers class its config names: transformers' own code, never the checkpoint's.
    A checkpoint missing any of the model's weights, or holding weights of its modules that the model lacks, is a
    ValueError: diagnosing the random weights of a decoy as if they were trained would be silently wrong."""
    kwargs = {"use_safetensors": True, **kwargs, "output_loading_info": True}
    try:
        model, info = auto.from_pretrained(source, **kwargs)
    except ValueError as error:
        known = named_class(kwargs.get("config"))
        if "Unrecognized configuration class" not in str(error) or known is None:
            raise
        kwargs.pop("trust_remote_code", None)
        model, info = known.from_pretrained(source, **kwargs)
    check_loaded_weights(model, info)
    return model


def check_loaded_weights(model: torch.nn.Module, info: dict) -> None:
    """Refuse what `from_pretrained` would leave at random or ignore inside the model: any missing weight but ViT's
    dense+tanh pooler (stock heads drop it and no diagnostic reads it), and unexpected weights inside a module of the
    model that has weights. Those of a head the model lacks are only not used: `classifier.*` of a head checkpoint
    loaded as a backbone, or BEiT pre-training's `layernorm.*`, an `nn.Identity` in `BeitModel`."""
    missing = sorted(key for key in info["missing_keys"] if not key.startswith("pooler."))
    if missing:
        raise InputError(
            f"the weights file lacks {len(missing)} of the model's weights ({', '.join(missing[:3])}, ...): it is not "
            "this model's checkpoint; allowed: a checkpoint holding every weight its config.json describes."
        )
    unexpected = sorted(key for key in info["unexpected_keys"] if _inside_weighted_module(model, key))
    if unexpected:
        raise InputError(
            f"the weights file holds {len(unexpected)} weights the model does not have ({', '.join(unexpected[:3])}): "
            "config.json and the weights disagree; allowed: the weights of the model its config.json describes."
        )


def _inside_weighted_module(model: torch.nn.Module, key: str) -> bool:
    """Whether `key`'s module (`a.b` of `a.b.weight`) is one of the model's and holds weights of its own or below."""
    parent = key.rpartition(".")[0]
    try:
        module = model.get_submodule(parent) if parent else None
    except AttributeError:
        return False
    return module is not None and any(True for _ in module.parameters())


def named_class(config) -> type | None:
    """The transformers model class the config's `architectures` names first, if transformers has one of that name
    (anything else there, a function say, is not a model class: None)."""
    names = getattr(config, "architectures", None) or []
    known = getattr(transformers, names[0], None) if names and isinstance(names[0], str) else None
    return known if isinstance(known, type) and issubclass(known, transformers.PreTrainedModel) else None


def source_where(source: str, revision: str | None) -> str:
    """How messages name `source` (and `revision`); raises an InputError at once for a source that is neither a folder
    nor a Hub id: a file, a path (./, /, ~, two slashes, or under a folder that exists here: a mistyped local folder
    must not wait on the Hub's retries), or a name the Hub would refuse."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    local = os.path.isdir(source)
    if local and revision is not None:
        raise InputError(f"revision: {revision!r} given for the local folder {source!r}; it applies to Hub ids only.")
    if local:
        return repr(source)
    allowed = "allowed: a model folder or a Hub id (org/name)"
    if os.path.exists(source):
        raise InputError(f"model: {source!r} is a file; {allowed}.")
    parent = os.path.dirname(source)
    path_like = source.startswith((".", "/", "~")) or source.count("/") > 1
    if path_like or (parent and os.path.isdir(parent) and not _on_hub(source, revision)):
        close = difflib.get_close_matches(os.path.basename(source), _folders(parent), n=3) if parent else []
        hint = f" (in {parent!r}: did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise InputError(f"model: {source!r} is not a folder{hint}; {allowed}.")
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise InputError(f"model: {source!r} is neither a folder nor a valid Hub id; {allowed}.") from None
    where = repr(source) + ("" if revision is None else f" at revision {revision!r}")
    return f"{where} (no local folder of that name; as a Hub id)"


def _on_hub(source: str, revision: str | None) -> bool:
    """Whether `source`, named like a folder under one that exists here (`zoo/vit-plian`), is a Hub model after all
    (`sink-models/vit-gated-reg` beside a clone named sink-models): in the cache, or one request without retries."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(source, "config.json", revision=revision), str):
            return True
        if constants.HF_HUB_OFFLINE:
            return False
        HfApi().model_info(source, revision=revision, timeout=10)
    except Exception:  # noqa: BLE001 -- not found, refused, unreachable or invalid: all mean "not a Hub model here"
        return False
    return True


def _folders(parent: str) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(parent) if entry.is_dir()]
    except OSError:
        return []


# Structure fields that size the model: a positive int each (a float, zero or a string fails deep in the build).
STRUCTURE_FIELDS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "patch_size")


def check_structure(values: dict, where: str) -> None:
    """Refuse a raw config.json (or its `vision_config`) whose structure fields are not positive ints."""
    vision = values.get("vision_config")
    for part, fields in (("", values), ("vision_config.", vision if isinstance(vision, dict) else {})):
        for name in STRUCTURE_FIELDS:
            value = fields.get(name)
            if value is None or (name == "patch_size" and _positive_pair(value)):
                continue
            if type(value) is not int or value < 1:
                raise InputError(f"model: {where} has config.json {part}{name} {value!r}; allowed: a positive integer.")


def _positive_pair(value) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and all(type(v) is int and v > 0 for v in value)


def check_weight_files(source: str, revision: str | None, raw: dict, where: str) -> None:
    """Before the model is built: refuse weights that are not all safetensors (a pickle-only folder, or a shard index
    naming anything else: it is never loaded), and a config.json asking for more layers than the weights could hold
    (a 100,000-layer config would take minutes to build before failing). A folder's files are read here; a Hub
    repo's safetensors headers are fetched alone (nothing to check offline, where only the cache is read)."""
    if os.path.isdir(source):
        tensors = _local_tensors(source, where)
    else:
        tensors = _hub_tensors(source, revision, where)
    vision = raw.get("vision_config") if isinstance(raw.get("vision_config"), dict) else raw
    layers = vision.get("num_hidden_layers")
    if tensors is not None and type(layers) is int and layers > tensors:  # every block holds several tensors
        raise InputError(
            f"model: {where} has config.json num_hidden_layers {layers}, but its safetensors files hold only {tensors} "
            "tensors; allowed: a config.json that matches its weights."
        )


def _local_tensors(folder: str, where: str) -> int:
    names = os.listdir(folder)
    weights = sorted(name for name in names if name.endswith(".safetensors"))
    if not weights:
        pickles = sorted(name for name in names if name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")))
        found = f"only {', '.join(pickles)} (a pickle, never loaded here)" if pickles else "no weights file"
        raise InputError(f"model: {where} has {found}; allowed: weights in safetensors files (model.safetensors).")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):  # transformers loads the shards it names, whatever their kind
        try:
            with open(index) as file:
                shards = set(json.load(file)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise InputError(
                f"model: {where} has an unreadable model.safetensors.index.json; allowed: its weight_map."
            ) from None
        wrong = sorted(str(shard) for shard in shards if shard not in weights)
        if wrong:
            raise InputError(
                f"model: {where} has a shard index naming {wrong[0]!r}, not one of its safetensors files; allowed: "
                "the folder's own .safetensors files."
            )
        weights = sorted(shards)
    return sum(_tensor_count(os.path.join(folder, name), where) for name in weights)


def _hub_tensors(repo: str, revision: str | None, where: str) -> int | None:
    from huggingface_hub import constants, get_safetensors_metadata
    from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        metadata = get_safetensors_metadata(repo, revision=revision)
    except NotASafetensorsRepoError:
        raise InputError(f"model: {where} has no safetensors weights (a pickle is never loaded here).") from None
    except SafetensorsParsingError as cause:  # a shard index naming a file that is not safetensors, say
        raise InputError(f"model: {where} has weights that are not safetensors ({first_line(cause, 160)}).") from None
    except Exception:  # noqa: BLE001 -- unreachable, missing, refused: from_pretrained then says which
        return None
    return len(metadata.weight_map)


def _tensor_count(path: str, where: str) -> int:
    """The number of tensors a safetensors file holds, read from its header alone; a file without a readable header
    (empty, truncated, not safetensors) is an InputError."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            return len(file.keys())
    except Exception as cause:  # noqa: BLE001 -- safetensors' own error type, OSError, ValueError: all mean unreadable
        raise InputError(
            f"model: {where} has {os.path.basename(path)}, which is not a readable safetensors file "
            f"({first_line(cause, 120)}); allowed: a complete safetensors file."
        ) from None


def read_config(source: str, revision: str | None, where: str) -> dict:
    """The raw config.json, its structure fields checked; read as a dict, since AutoConfig would refuse a remote-code
    config (SinkViT's) without trust_remote_code."""
    from transformers import PreTrainedConfig

    try:
        raw, _ = PreTrainedConfig.get_config_dict(source, revision=revision)
    except CONFIG_ERRORS as error:
        raise InputError(f"model: {where} could not be loaded: {first_line(error)}") from None
    check_structure(raw, where)
    return raw


def auto_config(source: str, revision: str | None, trust_remote_code: bool, where: str):
    """AutoConfig's config, with the remote-code rule: a config that needs its own code loads only if trusted."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except CONFIG_ERRORS as error:
        if isinstance(error, ValueError) and "trust_remote_code" in str(error):
            raise InputError(
                f"model: {where} runs its own code (config.json's auto_map or model_type); pass --trust-remote-code "
                "(trust_remote_code=True) if you trust it."
            ) from None
        raise InputError(f"model: {where} could not be loaded: {first_line(error)}") from None


def vision_channels(config, where: str) -> int:
    """The image channels of a config with a vision part (itself, or `vision_config` for dual encoders)."""
    vision = getattr(config, "vision_config", None) or config
    if not any(hasattr(vision, name) for name in ("image_size", "num_channels")):
        raise InputError(
            f"model: {where} is a {config.model_type} model without a vision encoder (text or audio); "
            "the sink diagnostics need a vision transformer."
        )
    return getattr(vision, "num_channels", 3)


def _image_processor(source: str, revision: str | None, trust_remote_code: bool, where: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise InputError(
            f"model: {where} has no usable image processor (preprocessor_config.json): {first_line(error, 160)}"
        ) from None
