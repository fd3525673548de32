"""The sink inspector's work, apart from its page: fetch a Hub checkpoint without its code, hold it to the Space's
limits, diagnose it once per (model, commit, images), draw one image's attention maps, publish a results row.

Safety: only config.json, preprocessor_config.json and safetensors files are downloaded, so no checkpoint code or
pickle ever reaches the machine; a config asking for its own code (auto_map) is refused before any weight is fetched;
SinkViT checkpoints load with the installed `sink_models` classes, stock families with transformers' own.
"""

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
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

FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the Space's CPU."""

    parameters: int = 100_000_000  # ViT-B (86 M) fits; ViT-L (304 M) does not
    images: int = 16
    pixels: int = 16_000_000  # per image
    seconds: float = 300.0  # per request, checked between batches

    def text(self) -> str:
        return (
            f"models up to {self.parameters / 1e6:g} M parameters, at most {self.images} images of at most "
            f"{self.pixels / 1e6:g} megapixels each, {self.seconds / 60:g} minutes per request"
        )


@dataclass(frozen=True)
class Checkpoint:
    """A Hub model fetched without its code: config, image processor and safetensors weights at one commit."""

    repo_id: str
    revision: str | None
    commit: str
    folder: Path
    parameters: int


@dataclass
class Entry:
    """One cached run: the report folder (the download), the used images and the checkpoint it came from."""

    key: str
    folder: Path
    checkpoint: Checkpoint

    @property
    def report_folder(self) -> Path:
        return self.folder / "report"

    @property
    def archive(self) -> Path:
        return self.folder / "report.zip"

    def report(self) -> SinkReport:
        return SinkReport.from_json(self.report_folder / "report.json")

    def image_names(self) -> list[str]:
        return self.report().summary["inputs"]["images"]


def local_command(repo_id: str, revision: str | None = None) -> str:
    """The command that makes the same report on one's own machine, without the Space's limits."""
    return f"sink-models inspect {repo_id}" + (f" --revision {revision}" if revision else "")


def fetch(model_id: str, revision: str | None, *, limits: Limits, endpoint: str | None = None) -> Checkpoint:
    """The checkpoint `model_id` at `revision` (default branch if None), after every check that needs no weights."""
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
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        raise InspectError(f"revision: {revision!r} is not a branch, tag or commit of {repo_id!r}.") from None
    except RepositoryNotFoundError:
        raise InspectError(f"model: {repo_id!r} is not on the Hub (or is private or gated): check the id.") from None
    except Exception as error:  # noqa: BLE001 -- any failure to reach the Hub is one line
        raise InspectError(f"model: {repo_id!r} could not be read from the Hub: {first_line(error)}") from None
    files = {sibling.rfilename for sibling in info.siblings or []}
    if "config.json" not in files:
        raise InspectError(f"model: {repo_id!r} has no config.json; allowed: a transformers or SinkViT checkpoint.")
    if not any(name.endswith(".safetensors") for name in files):
        raise InspectError(
            f"model: {repo_id!r} has no safetensors weights; the inspector loads safetensors only, never pickled "
            f"(.bin) weights. On your machine: {local_command(repo_id, revision)}"
        )
    config_file = hf_hub_download(repo_id, "config.json", revision=info.sha, endpoint=endpoint)
    parameters = _parameters(_config(Path(config_file), repo_id, revision))
    if parameters > limits.parameters:
        raise InspectError(
            f"model: {repo_id!r} has {parameters:,} parameters, over this Space's limit of {limits.parameters:,} "
            f"(it runs on a shared CPU). On your machine: "
            f"{local_command(repo_id, revision)}"
        )
    folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=FILES, endpoint=endpoint)
    return Checkpoint(repo_id, revision, info.sha, Path(folder), parameters)


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


def _parameters(config) -> int:
    """The parameter count, from the architecture built on the meta device (no memory, no weights); an architecture
    the diagnostics do not support is refused here, before the weights are fetched."""
    with torch.device("meta"):
        model = _skeleton(config)
    try:
        adapter_for(model)
    except (ValueError, AttributeError) as error:
        raise InspectError(str(error).strip().splitlines()[0]) from None
    return sum(parameter.numel() for parameter in model.parameters())


def _skeleton(config) -> torch.nn.Module:
    if isinstance(config, SinkViTConfig):
        return SinkViTModel(config)
    vision = getattr(config, "vision_config", None) or config
    if not any(hasattr(vision, name) for name in ("image_size", "num_channels")):
        raise InspectError(
            f"model: a {config.model_type} model has no vision encoder (text or audio); the inspector needs a "
            "vision transformer."
        )
    try:
        return transformers.AutoModel.from_config(config)
    except ValueError as error:  # a class the auto mapping lacks: the one its config names, transformers' own
        names = getattr(config, "architectures", None) or []
        known = getattr(transformers, names[0], None) if names else None
        if known is None:
            raise InspectError(f"model: {first_line(error)}") from None
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
            with Image.open(path) as image:
                if image.width * image.height > limits.pixels:
                    raise Image.DecompressionBombError
                found.images.append(image.convert("RGB"))
                found.names.append(name)
        except Image.DecompressionBombError:
            raise InspectError(
                f"images: {name} is over {limits.pixels / 1e6:g} megapixels; allowed: smaller images."
            ) from None
        except Exception:  # noqa: BLE001 -- any file PIL cannot read is skipped and listed, as the command does
            found.skipped.append(name)
    if not found.images:
        raise InspectError(f"images: none of the {len(paths[:max_images])} uploaded files is an image PIL can read.")
    return found


def _digest(images: Sequence[Image.Image]) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


class Inspector:
    """Runs requests against the Hub at `endpoint`, caching each report in `cache` under (model, commit, images);
    holds the last model used in memory for the attention maps of other images."""

    def __init__(self, cache: Path, *, endpoint: str | None = None, limits: Limits | None = None):
        self.cache, self.endpoint, self.limits = Path(cache), endpoint, limits or Limits()
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._loaded: tuple[Path, tuple] | None = None

    def images(self, paths: Sequence[str] | None, max_images: int) -> ImageSet:
        """The uploaded files, or the built-in set; `max_images` within the limit."""
        if type(max_images) is not int or not 1 <= max_images <= self.limits.images:
            raise InspectError(f"max images: got {max_images!r}; allowed: 1 to {self.limits.images}.")
        return uploaded_images(paths, max_images, self.limits) if paths else collect_images(max_images=max_images)

    def run(self, model_id: str, revision: str | None, found: ImageSet, progress: Progress = lambda *_: None) -> Entry:
        """The report of `model_id` at `revision` on `found`: from the cache if this commit has been inspected on
        these images, else computed and cached."""
        progress(0.0, "reading the model's config")
        checkpoint = fetch(model_id, revision, limits=self.limits, endpoint=self.endpoint)
        name = checkpoint.repo_id.replace("/", "--")
        key = hashlib.sha256(f"{checkpoint.repo_id}\n{checkpoint.commit}\n{_digest(found.images)}".encode())
        key = f"{name}-{checkpoint.commit[:12]}-{key.hexdigest()[:16]}"
        entry = Entry(key, self.cache / key, checkpoint)
        if (entry.archive).is_file():
            self.entries[key] = entry
            return entry
        with self._lock:
            model, processor, mode = self._model(checkpoint)
            deadline = time.monotonic() + self.limits.seconds
            watch = _watched(len(found.images), deadline, self.limits.seconds, checkpoint, progress)
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
        if self._loaded is None or self._loaded[0] != checkpoint.folder:
            self._loaded = None  # the old model goes before the new one loads: one in memory at a time
            self._loaded = (checkpoint.folder, load_model(str(checkpoint.folder)))
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
            staging = path.with_name(f".{path.name}")
            plot_attention(self.attention_maps(key, image), staging, layer)
            staging.replace(path)
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


def _watched(total: int, deadline: float, seconds: float, checkpoint: Checkpoint, progress: Progress):
    """Wraps the batches: progress after each, and the request's time limit checked before the next."""

    def watch(batches: Iterator[dict]) -> Iterator[dict]:
        done = 0
        progress(0.0, f"diagnosing {total} images")
        for batch in batches:
            if time.monotonic() > deadline:
                raise InspectError(
                    f"time: over this Space's {seconds:g} s per request after {done} of {total} images. On your "
                    f"machine: {local_command(checkpoint.repo_id, checkpoint.revision)}"
                )
            yield batch
            done += len(batch["pixel_values"])
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
        "revision": entry.checkpoint.revision,
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
