"""The sink inspector's work, apart from its page: fetch a Hub checkpoint without its code, hold it to the Space's
limits, diagnose it once per (model, commit, images), draw one image's attention maps, publish a results row.

Safety: only root-level config.json, preprocessor_config.json and safetensors files (and their index) are downloaded,
by exact name, so no checkpoint code or pickle ever reaches the machine; a config or image processor config asking
for its own code (auto_map, at any depth) is refused before any weight is fetched; SinkViT checkpoints load with the
installed `sink_models` classes, stock families with transformers' own, with this Space's attention implementation
(never one a config names). `Limits` bounds what one request may cost, each bound checked before the work it bounds:
the architecture's size fields, the parameters, the pixels of every image as decoded and at every step of the image
processor, the patches per image, the request's time (downloads included) and the stores on disk.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import transformers
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id
from PIL import Image

from sink_models import SinkViTConfig, SinkViTModel
from sink_models.diagnostics import SinkReport
from sink_models.diagnostics.capture import adapter_for
from sink_models.diagnostics.plots import plot_attention
from sink_models.errors import InputError, first_line
from sink_models.files import atomic_folder
from sink_models.inspection import ImageSet, collect_images, diagnose_images, load_model, write_report
from sink_models.inspection.images import check_pixels, processed_pixels
from sink_models.inspection.report import MARKER
from sink_models.loading import named_class, vision_channels

DATA_FILES = ("config.json", "preprocessor_config.json")  # with the root-level safetensors files and their index
SAFE_NAME = re.compile(r"[\w.-]+")  # a root-level file name, no glob characters: fetched by its exact name
CACHE_VERSION = "1"  # part of every cache key: raise it when what a report holds changes
STRUCTURE = {"num_hidden_layers": 64, "num_attention_heads": 64, "hidden_size": 4096, "intermediate_size": 16384}
# Further fields every part must hold as positive integers (or pairs of them) when it has them: a 0 divides, a float
# or a negative count breaks the build with an error that is not one line.
SIZES = ("patch_size", "image_size", "num_channels")
LOCAL_PATH = re.compile(r"(?<![\w:/.>])(?:/[^\s/'\"]+)+")  # an absolute path, not a URL's path
ATTENTION = "sdpa"  # torch's own kernel, supported by every family the diagnostics take: never a config's choice
Progress = Callable[[float, str], None]
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the Space's CPU (and, `STRUCTURE`, of the architecture it builds)."""

    parameters: int = 100_000_000  # ViT-B (86 M) fits; ViT-L (304 M) does not
    images: int = 16
    pixels: int = 16_000_000  # per image, as decoded and at every step of the image processor
    tokens: int = 2_048  # patches per image, as the image processor sizes it for the model
    seconds: float = 300.0  # per request, from the first request to the Hub (downloads included) to the last batch
    config_bytes: int = 1_000_000  # config.json, preprocessor_config.json, the shard index
    reports_bytes: int = 1_000_000_000  # the report cache, uploaded images included (kept as PNG); oldest go first
    weights_bytes: int = 2_000_000_000  # the fetched checkpoints (five of the largest allowed); oldest go first
    stored: int = 500  # folders in each of the two stores; oldest go first

    def text(self) -> str:
        return (
            f"models up to {self.parameters / 1e6:g} M parameters, at most {self.images} images of at most "
            f"{self.pixels / 1e6:g} megapixels each (as decoded and as the image processor resizes them) and "
            f"{self.tokens:,} patches as the model sees them, "
            f"{self.seconds / 60:g} minutes per request"
        )


@dataclass(frozen=True)
class Checkpoint:
    """A Hub model checked without its weights: its commit, the data files to fetch (with their sizes), its parameter
    count, its patch size and the folder its files go to."""

    repo_id: str
    revision: str | None
    commit: str
    files: tuple[str, ...]
    parameters: int
    folder: Path
    sizes: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    patch: tuple[int, int] = (1, 1)
    endpoint: str | None = None

    def download(self, deadline: float = float("inf")) -> Path:
        """The folder holding exactly `files` at `commit`: each fetched once, whole or not at all, by `deadline`."""
        for name in self.files:
            self.fetch_file(name, deadline)
        return self.folder

    def fetch_file(self, name: str, deadline: float) -> Path:
        """One file of the checkpoint, streamed into a staging file that becomes `folder / name` only once complete:
        the deadline is checked between chunks and bounds each wait, and no more bytes than the Hub listed are read."""
        target = self.folder / name
        if target.is_file():
            return target
        self.folder.mkdir(parents=True, exist_ok=True)
        url = hf_hub_url(self.repo_id, name, revision=self.commit, endpoint=self.endpoint)
        expected, received = self.sizes.get(name, 0), 0
        late = _late(self.repo_id, self.revision, f"fetching {name}")
        handle, staging = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(handle, "wb") as out:
                wait = min(_left(deadline, late), constants.HF_HUB_DOWNLOAD_TIMEOUT)
                headers = build_hf_headers()
                with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=wait) as response:
                    hf_raise_for_status(response)
                    for chunk in response.iter_bytes():  # as the bytes arrive, whatever their pace
                        _left(deadline, late)
                        received += len(chunk)
                        if received > expected:
                            raise InputError(
                                f"model: {self.repo_id!r}'s {name} is longer than the {expected:,} bytes the Hub lists."
                            )
                        out.write(chunk)
            if received != expected:
                raise InputError(f"model: {self.repo_id!r}'s {name} came with {received:,} of {expected:,} bytes.")
            os.replace(staging, target)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 -- a refused, broken or timed-out download is one line
            if time.monotonic() >= deadline:
                _left(deadline, late)
            raise InputError(f"model: {self.repo_id!r}'s {name} could not be fetched: {first_line(error)}") from None
        finally:
            Path(staging).unlink(missing_ok=True)
        return target


def _left(deadline: float, late: str) -> float:
    """Seconds left before `deadline`; past it, `late` is raised (what runs then is abandoned)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise InputError(late)
    return left


def _late(repo_id: str, revision: str | None, doing: str) -> str:
    """The one line of a request past its time limit, with the command that has none."""
    command = local_command(repo_id, revision)
    return f"time: over this Space's limit per request while {doing}. On your machine: {command}"


def _in_time(deadline: float, late: str, call: Callable):
    """call() in a worker thread, given up at `deadline` with `late` (for the Hub's API answers, which write nothing
    to disk: an abandoned call ends with its own timeout)."""
    _left(deadline, late)
    done: dict = {}

    def work() -> None:
        try:
            done["value"] = call()
        except BaseException as error:  # noqa: BLE001 -- handed to the caller's thread as it is
            done["error"] = error

    worker = threading.Thread(target=work, name="hub-call", daemon=True)
    worker.start()
    worker.join(min(max(deadline - time.monotonic(), 0), threading.TIMEOUT_MAX))
    if worker.is_alive():
        raise InputError(late)
    if "error" in done:
        raise done["error"]
    return done["value"]


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


def fetch(
    model_id: str,
    revision: str | None,
    *,
    limits: Limits,
    store: Path,
    endpoint: str | None = None,
    deadline: float = float("inf"),
) -> Checkpoint:
    """The checkpoint `model_id` at `revision` (default branch if None), after every check that needs no weights:
    the id, the files and their sizes, the config and the image processor's config (as data), the architecture, the
    parameter count. Its files go to a folder of `store`; nothing is fetched after `deadline`."""
    repo_id = (model_id or "").strip()
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InputError(
            f"model id: {repo_id!r} is not a Hub model id; allowed: org/name (letters, digits, '-', '_', '.')."
        ) from None
    revision = (revision or "").strip() or None
    if revision is not None and (len(revision) > 100 or any(c.isspace() for c in revision)):
        raise InputError(f"revision: {revision!r}; allowed: a branch, tag or commit (no spaces, 100 characters).")
    try:
        read_info = partial(HfApi(endpoint=endpoint).model_info, repo_id, revision=revision, files_metadata=True)
        info = _in_time(deadline, _late(repo_id, revision, "reading the model's files from the Hub"), read_info)
    except InputError:
        raise
    except RevisionNotFoundError:
        raise InputError(f"revision: {revision!r} is not a branch, tag or commit of {repo_id!r}.") from None
    except RepositoryNotFoundError:
        raise InputError(f"model: {repo_id!r} is not on the Hub (or is private or gated): check the id.") from None
    except Exception as error:  # noqa: BLE001 -- any failure to reach the Hub is one line
        raise InputError(f"model: {repo_id!r} could not be read from the Hub: {first_line(error)}") from None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or [] if SAFE_NAME.fullmatch(s.rfilename)}
    files = _data_files(repo_id, revision, sizes, limits)
    folder = store / f"{repo_id.replace('/', '--')}--{info.sha}"
    checkpoint = Checkpoint(repo_id, revision, info.sha, files, 0, folder, sizes, endpoint=endpoint)

    def read(name: str):
        if sizes[name] > limits.config_bytes:
            raise InputError(f"model: {repo_id!r} has a {name} of {sizes[name]:,} bytes; allowed: a small JSON file.")
        return _json(checkpoint.fetch_file(name, deadline), repo_id, name)

    config = _config(read("config.json"), checkpoint.folder, repo_id, revision)
    if "preprocessor_config.json" in files and "auto_map" in _keys(read("preprocessor_config.json")):
        raise InputError(
            f"model: {repo_id!r} has an image processor that asks for its own code (preprocessor_config.json's "
            "auto_map), and this Space never runs a checkpoint's code. On your machine, if you trust it: "
            f"{local_command(repo_id, revision)} --trust-remote-code"
        )
    parameters, patch = _parameters(config, repo_id, revision, limits)
    index = [name for name in files if name.endswith(".index.json")]
    if index:
        _check_index(read(index[0]), repo_id, files)
    return Checkpoint(repo_id, revision, info.sha, files, parameters, folder, sizes, patch, endpoint)


def _data_files(repo_id: str, revision: str | None, sizes: dict[str, int], limits: Limits) -> tuple[str, ...]:
    """The root-level data files to fetch; refuses a repo without config or safetensors, or too large weights."""
    if "config.json" not in sizes:
        raise InputError(f"model: {repo_id!r} has no config.json; allowed: a transformers or SinkViT checkpoint.")
    weights = sorted(name for name in sizes if name.endswith(".safetensors"))
    if not weights:
        raise InputError(
            f"model: {repo_id!r} has no safetensors weights; the inspector loads safetensors only, never pickled "
            f"(.bin) weights. On your machine: {local_command(repo_id, revision)}"
        )
    total = sum(sizes[name] for name in weights)
    if total > 4 * limits.parameters + limits.config_bytes:  # float32, with room for the header
        raise InputError(
            f"model: {repo_id!r} has {total / 1e9:.2f} GB of safetensors weights, more than {limits.parameters:,} "
            f"float32 parameters take. On your machine: {local_command(repo_id, revision)}"
        )
    index = [name for name in sizes if name.endswith(".safetensors.index.json")]
    return tuple(name for name in DATA_FILES if name in sizes) + tuple(weights) + tuple(index[:1])


def _json(path: Path, repo_id: str, name: str) -> dict:
    """A small JSON file of the repo as a dict: anything else (not JSON, nested past the parser's depth) is one line."""
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        why = "nested too deeply" if isinstance(error, RecursionError) else first_line(error)
        raise InputError(f"model: {repo_id!r} has a {name} that is not JSON this Space reads: {why}.") from None
    if not isinstance(raw, dict):
        raise InputError(f"model: {repo_id!r} has a {name} that is not a JSON object.")
    return raw


def _keys(value) -> set[str]:
    """Every key at every depth of parsed JSON (a loop, not recursion: the depth is the file's to choose)."""
    keys, todo = set(), [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            keys.update(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return keys


def _check_index(index: dict, repo_id: str, files: tuple[str, ...]) -> None:
    """A shard index may name only the repo's own root-level safetensors files, never its other data files
    (transformers would follow a path, and open a shard it cannot read as safetensors with torch.load)."""
    weights = index.get("weight_map")
    if not isinstance(weights, dict) or not all(isinstance(name, str) for name in weights.values()):
        raise InputError(f"model: {repo_id!r} has a shard index that is not a weight_map of file names.")
    shards = {name for name in files if name.endswith(".safetensors")}
    outside = sorted(set(weights.values()) - shards)
    if outside:
        raise InputError(
            f"model: {repo_id!r}'s shard index names files that are not its own shards: {outside[:3]}; allowed: its "
            "root-level .safetensors files."
        )


def _config(raw: dict, folder: Path, repo_id: str, revision: str | None):
    """The checkpoint's config, read as data: SinkViT's with the installed class; others only without remote code."""
    from transformers import AutoConfig

    if raw.get("model_type") == "sink_vit" and "auto_map" in _keys({k: v for k, v in raw.items() if k != "auto_map"}):
        raise InputError(f"model: {repo_id!r} has a config.json with an auto_map inside; allowed: at its top only.")
    if raw.get("model_type") != "sink_vit" and "auto_map" in _keys(raw):
        raise InputError(
            f"model: {repo_id!r} asks for its own code (config.json's auto_map), and this Space never runs a "
            "checkpoint's code: it takes transformers' own families and SinkViT checkpoints. On your machine, if "
            f"you trust it: {local_command(repo_id, revision)} --trust-remote-code"
        )
    _check_structure(raw, repo_id, revision)
    try:
        config = (
            SinkViTConfig.from_dict(raw)
            if raw.get("model_type") == "sink_vit"
            else AutoConfig.from_pretrained(folder, trust_remote_code=False)
        )
    except Exception as error:  # noqa: BLE001 -- transformers' field validation raises several kinds
        raise InputError(
            f"model: {repo_id!r} has a config this transformers cannot read: {first_line(error)}"
        ) from None
    config._attn_implementation = None  # transformers' default for the skeleton: a config's choice may be a Hub kernel
    return config


def _check_structure(raw: dict, repo_id: str, revision: str | None) -> None:
    """The config's size fields (its own, its vision and text parts'), as JSON gives them, before any config class
    reads them: positive integers (pairs for `SIZES`), within `STRUCTURE`, heads dividing the hidden size."""
    parts = [raw, raw.get("vision_config"), raw.get("text_config")]
    for part in (part for part in parts if isinstance(part, dict)):
        for name in (*STRUCTURE, *SIZES):
            if name not in part:
                continue
            value = part[name]
            values = value if name in SIZES and isinstance(value, list | tuple) and len(value) == 2 else [value]
            if not all(type(one) is int and one > 0 for one in values):
                allowed = "a positive integer" + (" or a pair of them" if name in SIZES else "")
                raise InputError(f"model: {repo_id!r} has {name} = {value!r}; allowed: {allowed}.")
            most = STRUCTURE.get(name)
            if most is not None and value > most:
                raise InputError(
                    f"model: {repo_id!r} has {name} = {value:,}, over the {most:,} this Space builds. On your "
                    f"machine: {local_command(repo_id, revision)}"
                )
        hidden, heads = part.get("hidden_size"), part.get("num_attention_heads")
        if hidden is not None and heads is not None and hidden % heads:
            raise InputError(
                f"model: {repo_id!r} has hidden_size = {hidden:,}, not a multiple of num_attention_heads = {heads:,}."
            )


def _parameters(config, repo_id: str, revision: str | None, limits: Limits) -> tuple[int, tuple[int, int]]:
    """(the parameter count, the patch size): the count from the architecture built on the meta device (no memory,
    no weights, transformers' default attention); an architecture the diagnostics do not support is refused
    here."""
    vision = getattr(config, "vision_config", None) or config
    patch = getattr(vision, "patch_size", 1)
    patch = tuple(patch) if isinstance(patch, list | tuple) else (patch, patch)
    with torch.device("meta"):
        try:
            model = _skeleton(config, repo_id)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 -- a config transformers cannot build is one line
            message = f"model: {repo_id!r} has a config this Space cannot build: {first_line(error)}"
            raise InputError(message) from None
    try:
        adapter_for(model)
    except (ValueError, AttributeError) as error:
        raise InputError(str(error).strip().splitlines()[0]) from None
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if parameters > limits.parameters:
        raise InputError(
            f"model: {repo_id!r} has {parameters:,} parameters, over this Space's limit of {limits.parameters:,} "
            f"(it runs on a shared CPU). On your machine: {local_command(repo_id, revision)}"
        )
    return parameters, patch


def _skeleton(config, repo_id: str) -> torch.nn.Module:
    if isinstance(config, SinkViTConfig):
        return SinkViTModel(config)
    vision_channels(config, repr(repo_id))  # a text or audio model: refused here
    try:
        return transformers.AutoModel.from_config(config)
    except ValueError as error:  # a class the auto mapping lacks: the one its config names, transformers' own
        known = named_class(config)
        if known is None:
            raise InputError(f"model: {repo_id!r}: {first_line(error)}") from None
        return known(config)


def uploaded_images(paths: Sequence[str], max_images: int, limits: Limits) -> ImageSet:
    """The uploaded files as an ImageSet (the first `max_images`): too many or too large is refused, a file PIL
    cannot read is skipped and listed."""
    if len(paths) > limits.images:
        raise InputError(f"images: {len(paths)} uploaded; allowed: at most {limits.images} per request.")
    found = ImageSet(f"{min(len(paths), max_images)} uploaded images")
    for path in paths[:max_images]:
        name = Path(path).name
        try:
            image = Image.open(path, formats=FORMATS)  # decoded as a picture only, never as PostScript
        except Image.DecompressionBombError:  # PIL's own refusal, far above the limit
            message = f"images: {name} is over {limits.pixels / 1e6:g} megapixels; allowed: smaller images."
            raise InputError(message) from None
        except Exception:  # noqa: BLE001 -- any file PIL cannot read is skipped and listed, as the command does
            found.skipped.append(name)
            continue
        with image:
            check_pixels(name, image.width, image.height, limits.pixels)  # from the header: nothing decoded yet
            try:
                picture = image.convert("RGB")
            except Exception:  # noqa: BLE001 -- a file PIL cannot decode is skipped and listed
                found.skipped.append(name)
                continue
        found.images.append(picture)
        found.names.append(name)
    if not found.images:
        raise InputError(f"images: none of the {len(paths[:max_images])} uploaded files is an image PIL can read.")
    return found


def _key(checkpoint: Checkpoint, found: ImageSet) -> str:
    """The cache key of a run: the model at its commit and the images (their pixels, names and source)."""
    digest = hashlib.sha256("\n".join([CACHE_VERSION, checkpoint.repo_id, checkpoint.commit, found.source]).encode())
    for name, image in zip(found.names, found.images, strict=True):
        digest.update(f"\n{name}\n{image.mode}{image.size}\n".encode())
        digest.update(image.tobytes())
    return f"{checkpoint.repo_id.replace('/', '--')}-{checkpoint.commit[:12]}-{digest.hexdigest()[:16]}"


class Inspector:
    """Runs requests against the Hub at `endpoint`, caching each report in `cache` under (model, commit, images) and
    the fetched checkpoints in `weights` (default: `cache`'s sibling `<name>-weights`, outside what the page serves),
    each store bounded by `limits`; holds the last model used in memory for the attention maps of other images."""

    def __init__(
        self, cache: Path, *, endpoint: str | None = None, limits: Limits | None = None, weights: Path | None = None
    ):
        self.cache, self.endpoint, self.limits = Path(cache), endpoint, limits or Limits()
        self.weights = Path(weights) if weights is not None else self.cache.with_name(f"{self.cache.name}-weights")
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[str, str], tuple] | None = None

    def images(self, paths: Sequence[str] | None, max_images: int) -> ImageSet:
        """The uploaded files, or the built-in set; `max_images` within the limit."""
        if type(max_images) is not int or not 1 <= max_images <= self.limits.images:
            raise InputError(f"max images: got {max_images!r}; allowed: 1 to {self.limits.images}.")
        return uploaded_images(paths, max_images, self.limits) if paths else collect_images(max_images=max_images)

    def run(self, model_id: str, revision: str | None, found: ImageSet, progress: Progress = lambda *_: None) -> Entry:
        """The report of `model_id` at `revision` on `found`: from the cache if this commit has been inspected on
        these images, else computed (weights fetched only then) and cached."""
        deadline = time.monotonic() + self.limits.seconds
        progress(0.0, "reading the model's config")
        checkpoint = fetch(
            model_id, revision, limits=self.limits, store=self.weights, endpoint=self.endpoint, deadline=deadline
        )
        key = _key(checkpoint, found)
        entry = Entry(key, self.cache / key, checkpoint)
        if entry.archive.is_file():
            os.utime(entry.folder)  # used now: the last to be evicted
            self.entries[key] = entry
            return entry
        _check_images(checkpoint, found, self.limits)
        with self._lock:
            progress(0.0, "fetching and loading the weights")
            model, processor, mode = self._model(checkpoint, deadline)
            watch = _watched(len(found.images), deadline, self.limits, checkpoint, progress)
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
        for gone in _evict(self.cache, self.limits.reports_bytes, self.limits.stored, entry.folder):
            self.entries.pop(gone.name, None)
        return entry

    def _model(self, checkpoint: Checkpoint, deadline: float = float("inf")) -> tuple:
        """(model, image processor, PIL mode) of `checkpoint`, loaded from its data files only, with this Space's
        attention implementation; one in memory."""
        if self._loaded is None or self._loaded[0] != (checkpoint.repo_id, checkpoint.commit):
            self._loaded = None  # the old model goes before the new one loads
            folder = str(checkpoint.download(deadline))
            _evict(self.weights, self.limits.weights_bytes, self.limits.stored, checkpoint.folder)
            os.utime(folder)  # used now: the last to be evicted
            try:
                loaded = load_model(folder, attn_implementation=ATTENTION)
            except InputError as error:  # named by its Hub id, not by the Space's cache folder
                raise InputError(str(error).replace(folder, checkpoint.repo_id)) from None
            self._loaded = ((checkpoint.repo_id, checkpoint.commit), loaded)
        return self._loaded[1]

    def message(self, error: BaseException) -> str:
        """The one line the page shows for `error`: ours as they are, anything else as its type and first line; never
        a path of this machine (the stores are named as such, any other absolute path by its last part)."""
        text = str(error) if isinstance(error, InputError) else f"error: {first_line(error)}"
        for root, name in ((self.weights, "<weights store>"), (self.cache, "<report cache>")):
            for form in {str(root.resolve()), str(root)}:
                text = text.replace(form, name)
        return LOCAL_PATH.sub(lambda path: path.group(0).rsplit("/", 1)[-1], text)

    def _write(self, entry: Entry, report: SinkReport, images: list[Image.Image]) -> None:
        with atomic_folder(entry.folder) as staging:
            write_report(report, staging / "report")
            (staging / "images").mkdir()
            for index, image in enumerate(images):  # kept for the attention maps of any image, later
                image.save(staging / "images" / f"{index:03d}.png")
            with zipfile.ZipFile(staging / "report.zip", "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted((staging / "report").iterdir()):
                    if path.name != MARKER:  # how `sink-models inspect --out` knows its own folders; not the report's
                        archive.write(path, path.name)

    def attention(self, key: str, image: int, layer: int) -> Path:
        """The per-head attention maps of used image `image` in `layer`, with each head's sink marked (a PNG)."""
        entry = self._entry(key, "attention")
        report = entry.report()
        if not 0 <= layer < report.model["layers"]:
            raise InputError(f"attention: layer {layer}; allowed: 0-{report.model['layers'] - 1}.")
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
            raise InputError(f"attention: image {image}; allowed: 0-{len(names) - 1}.")
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
            raise InputError(f"{what}: no report yet; run an inspection first.")
        return self.entries[key]

    def publish(self, key: str, dataset_id: str, token: str | None) -> str:
        """Write the report's summary as one row (a JSON file) into the results dataset `dataset_id` with the
        user's write `token`; returns the row's path in the dataset. The token is used for this call only."""
        entry = self._entry(key, "publish")
        dataset_id = (dataset_id or "").strip()
        try:
            validate_repo_id(dataset_id)
        except HFValidationError:
            raise InputError(f"dataset: {dataset_id!r} is not a Hub dataset id; allowed: org/name.") from None
        if not (token or "").strip():
            raise InputError("token: publishing needs a Hub write token for the dataset's owner.")
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
            raise InputError(f"publish: {dataset_id!r} could not be written: {first_line(error)}") from None
        return path


def _check_images(checkpoint: Checkpoint, found: ImageSet, limits: Limits) -> None:
    """Refuses an image over the patches or pixels `limits` allow as the checkpoint's image processor would make it,
    from the processor's settings and the image's size alone: before any weight is fetched or the processor runs."""
    from transformers import AutoImageProcessor

    command = local_command(checkpoint.repo_id, checkpoint.revision)
    try:  # its config and processor config are in the folder already; its class is transformers' own (no auto_map)
        processor = AutoImageProcessor.from_pretrained(checkpoint.folder, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 -- a processor transformers cannot make is one line
        why = first_line(error).replace(str(checkpoint.folder), repr(checkpoint.repo_id))
        message = f"model: {checkpoint.repo_id!r} has no usable image processor (preprocessor_config.json): {why}"
        raise InputError(message) from None
    for name, image in zip(found.names, found.images, strict=True):
        largest, pixels = processed_pixels(processor, image.width, image.height)
        patches = pixels // (checkpoint.patch[0] * checkpoint.patch[1])
        if patches > limits.tokens:
            raise InputError(
                f"images: the model's image processor makes {patches:,} patches of {name}, over this Space's "
                f"{limits.tokens:,} per image. On your machine: {command}"
            )
        if largest > limits.pixels:
            raise InputError(
                f"images: the model's image processor resizes {name} to {largest / 1e6:.1f} megapixels, over this "
                f"Space's {limits.pixels / 1e6:g}. On your machine: {command}"
            )


def _evict(store: Path, most_bytes: int, most_folders: int, keep: Path) -> list[Path]:
    """Removes the store's least recently used folders (`keep` never) until it holds at most `most_folders` folders
    of at most `most_bytes` in all; returns those removed."""
    if not store.is_dir():
        return []
    # Dot-named folders are writes in progress (atomic_folder's staging): theirs to finish or remove.
    done = (path for path in store.iterdir() if path.is_dir() and not path.name.startswith("."))
    folders = sorted(done, key=lambda path: path.stat().st_mtime)
    sizes = {path: sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) for path in folders}
    total, gone = sum(sizes.values()), []
    for path in folders:
        if total <= most_bytes and len(folders) - len(gone) <= most_folders:
            break
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
            total -= sizes[path]
            gone.append(path)
    return gone


def _watched(total: int, deadline: float, limits: Limits, checkpoint: Checkpoint, progress: Progress):
    """Wraps the batches: the request's time checked before each, progress after."""
    command = local_command(checkpoint.repo_id, checkpoint.revision)

    def watch(batches: Iterator[dict]) -> Iterator[dict]:
        done = 0
        progress(0.0, f"diagnosing {total} images")
        for batch in batches:
            pixels = batch["pixel_values"]
            if time.monotonic() > deadline:
                raise InputError(
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
