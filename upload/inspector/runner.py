"""The sink inspector's work, apart from its page: fetch a Hub checkpoint without its code, hold it to the Space's
limits, diagnose it once per (model, commit, images), draw one image's attention maps, publish a results row.

Safety: only root-level config.json, preprocessor_config.json and safetensors files (and their index) are downloaded,
by exact name, so no checkpoint code or pickle ever reaches the machine; a config or image processor config asking
for its own code (auto_map) is refused before any weight is fetched; SinkViT checkpoints load with the installed
`sink_models` classes, stock families with transformers' own. `Limits` bounds what one request may cost.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import transformers
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id
from PIL import Image

from sink_models import SinkViTConfig, SinkViTModel
from sink_models.diagnostics import SinkReport
from sink_models.diagnostics.capture import adapter_for
from sink_models.diagnostics.plots import plot_attention
from sink_models.errors import first_line
from sink_models.files import atomic_folder
from sink_models.inspection import ImageSet, InspectError, collect_images, diagnose_images, load_model, write_report
from sink_models.inspection.loading import named_class, vision_channels

DATA_FILES = ("config.json", "preprocessor_config.json")  # with the root-level safetensors files and their index
SAFE_NAME = re.compile(r"[\w.-]+")  # a root-level file name, no glob characters: fetched by its exact name
CACHE_VERSION = "1"  # part of every cache key: raise it when what a report holds changes
STRUCTURE = {"num_hidden_layers": 64, "num_attention_heads": 64, "hidden_size": 4096, "intermediate_size": 16384}
Progress = Callable[[float, str], None]
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the Space's CPU (and, `STRUCTURE`, of the architecture it builds)."""

    parameters: int = 100_000_000  # ViT-B (86 M) fits; ViT-L (304 M) does not
    images: int = 16
    pixels: int = 16_000_000  # per uploaded image
    tokens: int = 2_048  # patches per image, as the image processor sizes it for the model
    seconds: float = 300.0  # per request, from the first request to the Hub to the last batch
    config_bytes: int = 1_000_000  # config.json, preprocessor_config.json, the shard index

    def text(self) -> str:
        return (
            f"models up to {self.parameters / 1e6:g} M parameters, at most {self.images} images of at most "
            f"{self.pixels / 1e6:g} megapixels each and {self.tokens:,} patches as the model sees them, "
            f"{self.seconds / 60:g} minutes per request"
        )


@dataclass(frozen=True)
class Checkpoint:
    """A Hub model checked without its weights: its commit, the data files to fetch, its parameter count."""

    repo_id: str
    revision: str | None
    commit: str
    files: tuple[str, ...]
    parameters: int
    endpoint: str | None = None

    def download(self) -> Path:
        """The snapshot folder holding exactly `files` at `commit` (fetched once; then from the local cache)."""
        folder = snapshot_download(
            self.repo_id, revision=self.commit, allow_patterns=list(self.files), endpoint=self.endpoint
        )
        return Path(folder)


@dataclass
class Entry:
    """One cached run: the report folder (the download), the used images and the checkpoint it came from."""

    key: str
    folder: Path
    checkpoint: Checkpoint
    _report: SinkReport | None = field(default=None, repr=False)

    @property
    def report_folder(self) -> Path:
        return self.folder / "report"

    @property
    def archive(self) -> Path:
        return self.folder / "report.zip"

    def report(self) -> SinkReport:
        """report.json, read once: the page and every drawing of the run read it (a large model's runs to MBs)."""
        if self._report is None:
            self._report = SinkReport.from_json(self.report_folder / "report.json")
        return self._report


def local_command(repo_id: str, revision: str | None = None) -> str:
    """The command that makes the same report on one's own machine, without the Space's limits."""
    return f"sink-models inspect {repo_id}" + (f" --revision {revision}" if revision else "")


def fetch(model_id: str, revision: str | None, *, limits: Limits, endpoint: str | None = None) -> Checkpoint:
    """The checkpoint `model_id` at `revision` (default branch if None), after every check that needs no weights:
    the id, the files and their sizes, the config (as data), the architecture, the parameter count."""
    repo_id = (model_id or "").strip()
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InspectError(
            f"model id: {repo_id!r} is not a Hub model id; allowed: org/name (letters, digits, '-', '_', '.')."
        ) from None
    revision = (revision or "").strip() or None
    if revision is not None and (len(revision) > 100 or any(c.isspace() for c in revision)):
        raise InspectError(f"revision: {revision!r}; allowed: a branch, tag or commit (no spaces, 100 characters).")
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise InspectError(f"revision: {revision!r} is not a branch, tag or commit of {repo_id!r}.") from None
    except RepositoryNotFoundError:
        raise InspectError(f"model: {repo_id!r} is not on the Hub (or is private or gated): check the id.") from None
    except Exception as error:  # noqa: BLE001 -- any failure to reach the Hub is one line
        raise InspectError(f"model: {repo_id!r} could not be read from the Hub: {first_line(error)}") from None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or [] if SAFE_NAME.fullmatch(s.rfilename)}
    files = _data_files(repo_id, revision, sizes, limits)
    read = partial(_small_file, repo_id, info.sha, endpoint, sizes, limits)
    config = _config(read("config.json"), repo_id, revision)
    if "preprocessor_config.json" in files and "auto_map" in read("preprocessor_config.json").read_text():
        raise InspectError(
            f"model: {repo_id!r} has an image processor that asks for its own code (preprocessor_config.json's "
            "auto_map), and this Space never runs a checkpoint's code. On your machine, if you trust it: "
            f"{local_command(repo_id, revision)} --trust-remote-code"
        )
    parameters = _parameters(config, repo_id, revision, limits)
    index = [name for name in files if name.endswith(".index.json")]
    if index:
        _check_index(read(index[0]), repo_id, files)
    return Checkpoint(repo_id, revision, info.sha, files, parameters, endpoint)


def _data_files(repo_id: str, revision: str | None, sizes: dict[str, int], limits: Limits) -> tuple[str, ...]:
    """The root-level data files to fetch; refuses a repo without config or safetensors, or too large weights."""
    if "config.json" not in sizes:
        raise InspectError(f"model: {repo_id!r} has no config.json; allowed: a transformers or SinkViT checkpoint.")
    weights = sorted(name for name in sizes if name.endswith(".safetensors"))
    if not weights:
        raise InspectError(
            f"model: {repo_id!r} has no safetensors weights; the inspector loads safetensors only, never pickled "
            f"(.bin) weights. On your machine: {local_command(repo_id, revision)}"
        )
    total = sum(sizes[name] for name in weights)
    if total > 4 * limits.parameters + limits.config_bytes:  # float32, with room for the header
        raise InspectError(
            f"model: {repo_id!r} has {total / 1e9:.2f} GB of safetensors weights, more than {limits.parameters:,} "
            f"float32 parameters take. On your machine: {local_command(repo_id, revision)}"
        )
    index = [name for name in sizes if name.endswith(".safetensors.index.json")]
    return tuple(name for name in DATA_FILES if name in sizes) + tuple(weights) + tuple(index[:1])


def _small_file(repo_id: str, commit: str, endpoint: str | None, sizes: dict, limits: Limits, name: str) -> Path:
    if sizes[name] > limits.config_bytes:
        raise InspectError(f"model: {repo_id!r} has a {name} of {sizes[name]:,} bytes; allowed: a small JSON file.")
    return Path(hf_hub_download(repo_id, name, revision=commit, endpoint=endpoint))


def _check_index(path: Path, repo_id: str, files: tuple[str, ...]) -> None:
    """A shard index may name only the repo's own root-level safetensors files (transformers would follow a path)."""
    try:
        shards = set(json.loads(path.read_text())["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InspectError(f"model: {repo_id!r} has a shard index that is not a weight_map.") from None
    if not shards <= set(files):
        outside = sorted(str(name) for name in shards - set(files))[:3]
        raise InspectError(f"model: {repo_id!r}'s shard index names files that are not its own shards: {outside}.")


def _config(path: Path, repo_id: str, revision: str | None):
    """The checkpoint's config, read as data: SinkViT's with the installed class; others only without remote code."""
    from transformers import AutoConfig

    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InspectError(f"model: {repo_id!r} has a config.json that is not JSON: {first_line(error)}") from None
    if not isinstance(raw, dict):
        raise InspectError(f"model: {repo_id!r} has a config.json that is not a JSON object.")
    if raw.get("model_type") != "sink_vit" and "auto_map" in raw:
        raise InspectError(
            f"model: {repo_id!r} asks for its own code (config.json's auto_map), and this Space never runs a "
            "checkpoint's code: it takes transformers' own families and SinkViT checkpoints. On your machine, if "
            f"you trust it: {local_command(repo_id, revision)} --trust-remote-code"
        )
    try:
        if raw.get("model_type") == "sink_vit":
            return SinkViTConfig.from_dict(raw)
        return AutoConfig.from_pretrained(path.parent, trust_remote_code=False)
    except (ValueError, TypeError, KeyError) as error:
        raise InspectError(
            f"model: {repo_id!r} has a config this transformers cannot read: {first_line(error)}"
        ) from None


def _parameters(config, repo_id: str, revision: str | None, limits: Limits) -> int:
    """The parameter count, from the architecture built on the meta device (no memory, no weights), once its size
    fields are within `STRUCTURE`; an architecture the diagnostics do not support is refused here."""
    for part in (config, getattr(config, "vision_config", None), getattr(config, "text_config", None)):
        for name, most in STRUCTURE.items():
            value = getattr(part, name, None)
            if isinstance(value, int) and value > most:
                raise InspectError(
                    f"model: {repo_id!r} has {name} = {value:,}, over the {most:,} this Space builds. On your "
                    f"machine: {local_command(repo_id, revision)}"
                )
    with torch.device("meta"):
        model = _skeleton(config, repo_id)
    try:
        adapter_for(model)
    except (ValueError, AttributeError) as error:
        raise InspectError(str(error).strip().splitlines()[0]) from None
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if parameters > limits.parameters:
        raise InspectError(
            f"model: {repo_id!r} has {parameters:,} parameters, over this Space's limit of {limits.parameters:,} "
            f"(it runs on a shared CPU). On your machine: {local_command(repo_id, revision)}"
        )
    return parameters


def _skeleton(config, repo_id: str) -> torch.nn.Module:
    if isinstance(config, SinkViTConfig):
        return SinkViTModel(config)
    vision_channels(config, repr(repo_id))  # a text or audio model: refused here
    try:
        return transformers.AutoModel.from_config(config)
    except ValueError as error:  # a class the auto mapping lacks: the one its config names, transformers' own
        known = named_class(config)
        if known is None:
            raise InspectError(f"model: {repo_id!r}: {first_line(error)}") from None
        return known(config)


def uploaded_images(paths: Sequence[str], max_images: int, limits: Limits) -> ImageSet:
    """The uploaded files as an ImageSet (the first `max_images`): too many or too large is refused, a file PIL
    cannot read is skipped and listed."""
    if len(paths) > limits.images:
        raise InspectError(f"images: {len(paths)} uploaded; allowed: at most {limits.images} per request.")
    found = ImageSet(f"{min(len(paths), max_images)} uploaded images")
    for path in paths[:max_images]:
        name = Path(path).name
        try:
            with Image.open(path, formats=FORMATS) as image:  # decoded as a picture only, never as PostScript
                size = image.width * image.height  # read from the header: nothing decoded yet
                picture = image.convert("RGB") if size <= limits.pixels else None
        except Image.DecompressionBombError:  # PIL's own refusal, far above the limit
            picture = None
        except Exception:  # noqa: BLE001 -- any file PIL cannot read is skipped and listed, as the command does
            found.skipped.append(name)
            continue
        if picture is None:
            raise InspectError(f"images: {name} is over {limits.pixels / 1e6:g} megapixels; allowed: smaller images.")
        found.images.append(picture)
        found.names.append(name)
    if not found.images:
        raise InspectError(f"images: none of the {len(paths[:max_images])} uploaded files is an image PIL can read.")
    return found


def _key(checkpoint: Checkpoint, found: ImageSet) -> str:
    """The cache key of a run: the model at its commit and the images (their pixels, names and source)."""
    digest = hashlib.sha256("\n".join([CACHE_VERSION, checkpoint.repo_id, checkpoint.commit, found.source]).encode())
    for name, image in zip(found.names, found.images, strict=True):
        digest.update(f"\n{name}\n{image.mode}{image.size}\n".encode())
        digest.update(image.tobytes())
    return f"{checkpoint.repo_id.replace('/', '--')}-{checkpoint.commit[:12]}-{digest.hexdigest()[:16]}"


class Inspector:
    """Runs requests against the Hub at `endpoint`, caching each report in `cache` under (model, commit, images);
    holds the last model used in memory for the attention maps of other images."""

    def __init__(self, cache: Path, *, endpoint: str | None = None, limits: Limits | None = None):
        self.cache, self.endpoint, self.limits = Path(cache), endpoint, limits or Limits()
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[str, str], tuple] | None = None

    def images(self, paths: Sequence[str] | None, max_images: int) -> ImageSet:
        """The uploaded files, or the built-in set; `max_images` within the limit."""
        if type(max_images) is not int or not 1 <= max_images <= self.limits.images:
            raise InspectError(f"max images: got {max_images!r}; allowed: 1 to {self.limits.images}.")
        return uploaded_images(paths, max_images, self.limits) if paths else collect_images(max_images=max_images)

    def run(self, model_id: str, revision: str | None, found: ImageSet, progress: Progress = lambda *_: None) -> Entry:
        """The report of `model_id` at `revision` on `found`: from the cache if this commit has been inspected on
        these images, else computed (weights fetched only then) and cached."""
        deadline = time.monotonic() + self.limits.seconds
        progress(0.0, "reading the model's config")
        checkpoint = fetch(model_id, revision, limits=self.limits, endpoint=self.endpoint)
        key = _key(checkpoint, found)
        entry = Entry(key, self.cache / key, checkpoint)
        if entry.archive.is_file():
            self.entries[key] = entry
            return entry
        with self._lock:
            progress(0.0, "fetching and loading the weights")
            model, processor, mode = self._model(checkpoint)
            watch = _watched(len(found.images), deadline, self.limits, checkpoint, model.config, progress)
            report = diagnose_images(model, processor, found, mode, watch=watch)
        progress(1.0, "writing the report")
        report.summary["inputs"] = {
            "model": checkpoint.repo_id,
            "revision": checkpoint.revision,
            "commit": checkpoint.commit,
            "images_from": found.source,
            "images": found.used,
            "skipped": found.skipped,
        }
        self._write(entry, report, [image for i, image in enumerate(found.images) if i not in found.failed])
        self.entries[key] = entry
        return entry

    def _model(self, checkpoint: Checkpoint) -> tuple:
        """(model, image processor, PIL mode) of `checkpoint`, loaded from its data files only; one in memory."""
        if self._loaded is None or self._loaded[0] != (checkpoint.repo_id, checkpoint.commit):
            self._loaded = None  # the old model goes before the new one loads
            folder = str(checkpoint.download())
            try:
                loaded = load_model(folder)
            except InspectError as error:  # named by its Hub id, not by the Space's cache folder
                raise InspectError(str(error).replace(folder, checkpoint.repo_id)) from None
            self._loaded = ((checkpoint.repo_id, checkpoint.commit), loaded)
        return self._loaded[1]

    def _write(self, entry: Entry, report: SinkReport, images: list[Image.Image]) -> None:
        with atomic_folder(entry.folder) as staging:
            write_report(report, staging / "report")
            (staging / "images").mkdir()
            for index, image in enumerate(images):  # kept for the attention maps of any image, later
                image.save(staging / "images" / f"{index:03d}.png")
            shutil.make_archive(str(staging / "report"), "zip", staging / "report")

    def attention(self, key: str, image: int, layer: int) -> Path:
        """The per-head attention maps of used image `image` in `layer`, with each head's sink marked (a PNG)."""
        entry = self._entry(key, "attention")
        report = entry.report()
        if not 0 <= layer < report.model["layers"]:
            raise InspectError(f"attention: layer {layer}; allowed: 0-{report.model['layers'] - 1}.")
        path = entry.folder / "attention" / f"image{image:03d}-layer{layer:03d}.png"
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            handle, staging = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
            os.close(handle)
            try:  # a name of its own per drawing: two requests may draw the same map at once
                plot_attention(self.attention_maps(key, image), Path(staging), layer)
                os.replace(staging, path)
            finally:
                Path(staging).unlink(missing_ok=True)
        return path

    def attention_maps(self, key: str, image: int) -> SinkReport:
        """A report whose `attention` holds used image `image`'s maps: the run's own for the image it kept, else
        those of one more forward pass on that image alone."""
        entry = self._entry(key, "attention")
        report = entry.report()
        names = report.summary["inputs"]["images"]
        if not 0 <= image < len(names):
            raise InspectError(f"attention: image {image}; allowed: 0-{len(names) - 1}.")
        if image == report.attention["image"]:
            return report
        with self._lock:
            model, processor, mode = self._model(entry.checkpoint)
            with Image.open(entry.folder / "images" / f"{image:03d}.png") as picture:
                one = ImageSet(names[image], [names[image]], [picture.convert("RGB")])
            report = diagnose_images(model, processor, one, mode)
        report.attention["image"] = image
        return report

    def _entry(self, key: str | None, what: str) -> Entry:
        if key not in self.entries:
            raise InspectError(f"{what}: no report yet; run an inspection first.")
        return self.entries[key]

    def publish(self, key: str, dataset_id: str, token: str | None) -> str:
        """Write the report's summary as one row (a JSON file) into the results dataset `dataset_id` with the
        user's write `token`; returns the row's path in the dataset. The token is used for this call only."""
        entry = self._entry(key, "publish")
        dataset_id = (dataset_id or "").strip()
        try:
            validate_repo_id(dataset_id)
        except HFValidationError:
            raise InspectError(f"dataset: {dataset_id!r} is not a Hub dataset id; allowed: org/name.") from None
        if not (token or "").strip():
            raise InspectError("token: publishing needs a Hub write token for the dataset's owner.")
        row, path = results_row(entry), f"inspections/{entry.key}.json"
        api = HfApi(endpoint=self.endpoint, token=token.strip())
        try:
            api.create_repo(dataset_id, repo_type="dataset", exist_ok=True)
            api.upload_file(
                path_or_fileobj=json.dumps(row, indent=1).encode(),
                path_in_repo=path,
                repo_id=dataset_id,
                repo_type="dataset",
                commit_message=f"sink inspector: {entry.checkpoint.repo_id} at {entry.checkpoint.commit[:12]}",
            )
        except Exception as error:  # noqa: BLE001 -- a refused token or an unreachable Hub is one line
            raise InspectError(f"publish: {dataset_id!r} could not be written: {first_line(error)}") from None
        return path


def _watched(total: int, deadline: float, limits: Limits, checkpoint: Checkpoint, config, progress: Progress):
    """Wraps the batches: the patches per image and the request's time checked before each, progress after."""
    vision = getattr(config, "vision_config", None) or config
    patch = vision.patch_size if isinstance(vision.patch_size, list | tuple) else (vision.patch_size,) * 2
    command = local_command(checkpoint.repo_id, checkpoint.revision)

    def watch(batches: Iterator[dict]) -> Iterator[dict]:
        done = 0
        progress(0.0, f"diagnosing {total} images")
        for batch in batches:
            pixels = batch["pixel_values"]  # (batch, channels, height, width), or (batch, patches, values) for NaFlex
            size = (
                pixels.shape[1]
                if pixels.dim() == 3
                else (pixels.shape[-2] // patch[0]) * (pixels.shape[-1] // patch[1])
            )
            if size > limits.tokens:
                raise InspectError(
                    f"images: the model's image processor makes {size:,} patches per image, over this Space's "
                    f"{limits.tokens:,}. On your machine: {command}"
                )
            if time.monotonic() > deadline:
                raise InspectError(
                    f"time: over this Space's {limits.seconds:g} s per request after {done} of {total} images. On "
                    f"your machine: {command}"
                )
            yield batch
            done += len(pixels)
            progress(min(done / total, 1.0), f"diagnosed {done} of {total} images")

    return watch


def results_row(entry: Entry) -> dict:
    """What a results dataset row holds: the model and commit, the images, the summary and the per-layer table."""
    report = entry.report()
    inputs = report.summary["inputs"]
    try:
        package = version("sink-models")
    except PackageNotFoundError:  # the Space's copy of the package is not an installed distribution
        package = None
    return {
        "model": entry.checkpoint.repo_id,
        "revision": inputs["revision"],
        "commit": entry.checkpoint.commit,
        "parameters": entry.checkpoint.parameters,
        "images_from": inputs["images_from"],
        "images": len(inputs["images"]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sink_models": package,
        "architecture": report.model,
        "thresholds": report.thresholds,
        "summary": {name: value for name, value in report.summary.items() if name != "inputs"},
        "layers": report.layers,
    }
