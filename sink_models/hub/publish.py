"""Publish the reference zoo to the Hub with the real `huggingface_hub` client: one model repo per checkpoint (code,
weights, card, `.eval_results`, results, recipe) under a version tag, and the results dataset.

Each repo changes by one atomic commit (`upload_folder`) and only when `plan()` finds a file that differs from the
Hub's (by git blob oid, or by sha256 for the weights and figures the Hub stores through LFS) or, for a model repo,
a file the new version no longer has; pushing the same content again makes no commit. Transient server errors (5xx)
are retried; a failure, or an answer the client cannot read, names the repo and the step in one line. Before a model
repo's commit, the staged folder is reloaded with `trust_remote_code` in a fresh process and must reproduce the local
model's logits.
"""

import glob
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

from ..evaluation.cards import ZOO_VERSION, eval_results_file, merge_sections, usage_section

try:  # the HTTP library under huggingface_hub 2.x; its connection errors are not OSErrors
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover -- other huggingface_hub versions
    _TransportError = ConnectionError
from ..errors import InputError, first_line
from ..files import atomic_write

RESULTS_DATASET = "sink-zoo-results"
SPACE = "sink-zoo-leaderboard"
INSPECTOR = "sink-zoo-inspector"
COLLECTION = "Attention-sink ViT zoo"
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
INSPECTOR_FILES = ("app.py", "runner.py", "README.md")
CPU_TORCH = "--extra-index-url https://download.pytorch.org/whl/cpu\n"
MODEL_FILES = (
    "config.json",
    "configuration_sink_vit.py",
    "modeling_sink_vit.py",
    "model.safetensors",
    "preprocessor_config.json",
    "training_args.json",
    "training_summary.json",  # the stability figures eval/run.py reads beside the weights, on the Hub too
)
PARITY_TOLERANCE = 1e-5


class HubError(RuntimeError):
    """A step on the Hub failed (an error answer that stays, an answer the client cannot read, a parity mismatch, a
    published tag on another commit): one line naming the repo and the step. Not bad input: the input was fine."""


@dataclass
class Change:
    """What a push would do to one repo: create it, and which files it would add or change."""

    repo_id: str
    repo_type: str
    exists: bool
    changed: list[str] = field(default_factory=list)
    tag: str | None = None
    head: str | None = None  # the commit the plan read (None: no repo yet)
    removed: list[str] = field(default_factory=list)

    @property
    def dirty(self) -> bool:
        """Whether pushing makes a commit."""
        return bool(self.changed or self.removed)

    def describe(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type} "
        if not self.exists:
            text = f"create {kind}{self.repo_id} with {len(self.changed)} files: {', '.join(self.changed)}"
        elif self.dirty:
            edits = [", ".join(self.changed)] if self.changed else []
            edits += [f"delete {', '.join(self.removed)}"] if self.removed else []
            text = f"update {kind}{self.repo_id}: {'; '.join(edits)}"
        else:
            text = f"unchanged {kind}{self.repo_id}"
        return text + (f"; tag {self.tag}" if self.tag else "")


def stage_model(name: str, repo_id: str, root: Path, staging: Path) -> Path:
    """The folder a zoo model's repo holds: zoo/<name> (safetensors weights, config with auto_map, the two code
    files, image processor, recipe, training summary), model_cards/<name> (README.md with its PNGs),
    results/<name>.json as results.json, and the card's numbers as `.eval_results/<dataset>.yaml`."""
    source, card = root / "zoo" / name, root / "model_cards" / name
    needed = [*(source / f for f in MODEL_FILES), card / "README.md", root / "results" / f"{name}.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise InputError(f"{name}: missing {missing}; build the zoo (zoo/build.sh) and run eval/run.py first.")
    if any(source.glob("*.bin")) or any(source.glob("*.pt")):
        raise InputError(f"{name}: pickled weights in {source}; only safetensors are published.")
    folder = staging / name
    folder.mkdir(parents=True)
    for file in MODEL_FILES:
        shutil.copy2(source / file, folder / file)
    for file in [card / "README.md", *sorted(card.glob("*.png"))]:
        shutil.copy2(file, folder / file.name)
    shutil.copy2(root / "results" / f"{name}.json", folder / "results.json")
    # The card's usage snippet names the repo it is pushed to, pinned to the version tag.
    result = json.loads((folder / "results.json").read_text())
    readme = folder / "README.md"
    readme.write_text(merge_sections(readme.read_text(), usage_section(result, repo_id, ZOO_VERSION)))
    path, text = eval_results_file(result)
    (folder / path).parent.mkdir()
    (folder / path).write_text(text)
    return folder


def stage_space(app: Path, results_repo: str, folder: Path) -> Path:
    """The leaderboard Space: spaces/leaderboard/ (app, README with the Space config, requirements), a copy of
    sink_models/hub/leaderboard.py (the Space runs without this package) and the name of the results dataset."""
    folder.mkdir(parents=True)
    for name in SPACE_FILES:
        shutil.copy2(app / name, folder / name)
    shutil.copy2(Path(__file__).with_name("leaderboard.py"), folder / "leaderboard.py")
    (folder / "results_repo.txt").write_text(results_repo + "\n")
    return folder


def stage_inspector(app: Path, zoo: list[str], folder: Path) -> Path:
    """The inspector Space: spaces/inspector/ (app, runner, README with the Space config), a copy of this
    sink_models package (it loads SinkViT checkpoints, never a repo's own code), the package's runtime requirements
    (gradio comes with the Space's sdk) and the zoo's repo ids."""
    folder.mkdir(parents=True)
    for name in INSPECTOR_FILES:
        shutil.copy2(app / name, folder / name)
    package = Path(__file__).parents[1]  # sink_models, this file being sink_models/hub/publish.py
    shutil.copytree(package, folder / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    requires = [r for r in importlib.metadata.requires("sink-models") or [] if "extra ==" not in r]
    # CPU wheels of torch: the Space runs on a CPU, and the default index would fetch the CUDA build (GBs).
    (folder / "requirements.txt").write_text(CPU_TORCH + "".join(f"{r}\n" for r in requires))
    (folder / "zoo_models.txt").write_text("".join(f"{repo_id}\n" for repo_id in zoo))
    return folder


def collection_plan(api: HfApi, org: str, items: list[tuple[str, str]]) -> str:
    """What add_to_collection would do, from read-only requests."""
    found = _find_collection(api, org)
    if found is None:
        return f"create collection {COLLECTION!r} with {len(items)} items"
    present = {(item.item_id, item.item_type) for item in found.items}
    missing = [item_id for item_id, kind in items if (item_id, kind) not in present]
    return f"collection {COLLECTION!r}: add {missing}" if missing else f"unchanged collection {COLLECTION!r}"


def _find_collection(api: HfApi, org: str):
    listed = next((c for c in api.list_collections(owner=org, limit=100) if c.title == COLLECTION), None)
    return None if listed is None else api.get_collection(listed.slug)  # listings show only the first items


def add_to_collection(api: HfApi, org: str, items: list[tuple[str, str]], private: bool = False, **retry) -> int:
    """Create the org's collection if needed and add the items it lacks; returns how many were added."""
    found = retried(
        lambda: api.create_collection(COLLECTION, namespace=org, private=private, exists_ok=True),
        f"{org}: collection create",
        **retry,
    )
    present = {(item.item_id, item.item_type) for item in found.items}
    missing = [(item_id, kind) for item_id, kind in items if (item_id, kind) not in present]
    for item_id, kind in missing:
        add = lambda item_id=item_id, kind=kind: api.add_collection_item(found.slug, item_id, kind, exists_ok=True)  # noqa: E731
        retried(add, f"{org}: collection add {item_id}", **retry)
    return len(missing)


def parity_check(staged: Path, local: Path) -> float:
    """Reload `staged` through trust_remote_code in a fresh process (its own HF_HOME) and return the largest
    difference of its logits from the library's model loaded from `local`; a HubError above PARITY_TOLERANCE."""
    env = {**os.environ, "HF_HOME": str(staged.parent / ".parity-hf-home"), "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sink_models.hub.parity", str(staged), str(local)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        raise HubError(f"{staged.name}: parity check: no answer in 600 s.") from None
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HubError(f"{staged.name}: parity check: the staged folder does not load ({last}).")
    difference = json.loads(done.stdout.strip().splitlines()[-1])["max_abs_diff"]
    if difference > PARITY_TOLERANCE:
        raise HubError(
            f"{staged.name}: parity check: the staged folder's logits differ from the local model's by "
            f"{difference:.3g} (allowed: {PARITY_TOLERANCE})."
        )
    return difference


def git_blob_oid(content: bytes) -> str:
    """The oid the Hub lists for a file stored in git (as `git hash-object` computes it)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def plan(
    api: HfApi, repo_id: str, folder: Path, repo_type: str = "model", tag: str | None = None, mirror: bool = False
) -> Change:
    """What pushing `folder` to `repo_id` would change, from read-only requests: the files of the head commit (with
    their oids), with `mirror` the files it has beyond `folder` (to delete, `.gitattributes` kept), and, for `tag`,
    whether it is published already."""
    try:
        info = api.repo_info(repo_id, repo_type=repo_type, files_metadata=True)
    except RepositoryNotFoundError:
        return Change(repo_id, repo_type, exists=False, changed=_files(folder), tag=tag)
    remote = {sibling.rfilename: sibling for sibling in info.siblings}
    local = _files(folder)
    changed = [path for path in local if not _same(folder / path, remote.get(path))]
    removed = sorted(set(remote) - set(local) - {".gitattributes"}) if mirror else []
    if tag is not None and tag in {ref.name for ref in api.list_repo_refs(repo_id, repo_type=repo_type).tags}:
        tag = None
    return Change(repo_id, repo_type, exists=True, changed=changed, tag=tag, head=info.sha, removed=removed)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _same(path: Path, entry) -> bool:
    if entry is None:
        return False
    content = path.read_bytes()
    if getattr(entry, "lfs", None) is not None:  # LFS files are listed by the sha256 of their content
        return hashlib.sha256(content).hexdigest() == entry.lfs.sha256
    return git_blob_oid(content) == entry.blob_id


T = TypeVar("T")

TRANSIENT = {408, 429}  # besides 5xx: timeouts and rate limits pass too
# What huggingface_hub raises on a 200 answer it cannot read (an HTML page, cut-off JSON, JSON of another shape):
# JSONDecodeError and its own "malformed response" errors are ValueErrors, and its parsers fail on missing keys
# and wrong types with KeyError, TypeError, AttributeError or IndexError.
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def retried(call: Callable[[], T], what: str, attempts: int = 4, wait: float = 2.0) -> T:
    """`call()`, retried on transient failures (5xx, 408, 429, lost connections) with a doubling wait; any failure
    that stays, and any answer the client cannot read, becomes a HubError naming `what`."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 -- _failure sorts it out and re-raises what is no Hub failure
            failure = error
            transient, summary = _failure(error)
        if not transient or attempt == attempts:
            raise HubError(f"{what}: {summary} (after {attempt} attempt{'s' * (attempt > 1)}).") from failure
        time.sleep(wait * 2 ** (attempt - 1))


def _failure(error: Exception) -> tuple[bool, str]:
    """(worth retrying, one-line summary) of a failed call to the Hub; anything else is re-raised."""
    cause, context = error, ""
    # An LFS upload wraps its failure: RuntimeError("Error while uploading 'model.safetensors' to the Hub.").
    if type(error) is RuntimeError and isinstance(error.__cause__, Exception):
        cause, context = error.__cause__, f"{error} "
    if isinstance(cause, HfHubHTTPError):  # before OSError, which it is
        status = getattr(cause.response, "status_code", None)
        return status is not None and (status >= 500 or status in TRANSIENT), context + first_line(cause)
    if isinstance(cause, (ConnectionError, TimeoutError, _TransportError)):  # refused, dropped, timed out
        return True, context + first_line(cause)
    if isinstance(cause, UNREADABLE) and not isinstance(cause, HFValidationError) and _raised_by_client(cause):
        return False, f"{context}unexpected answer from the server: {first_line(cause)}"
    raise error


def _raised_by_client(error: BaseException) -> bool:
    """Whether `error` came from inside huggingface_hub, below our last frame (reading an answer), and not from
    its argument checks: a bug of ours or a wrong call stays a traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = max((i for i, f in enumerate(frames) if f"{os.sep}sink_models{os.sep}" in f.filename), default=-1)
    client = [f for f in frames[ours + 1 :] if f"{os.sep}huggingface_hub{os.sep}" in f.filename]
    # Its decorators' wrappers only pass the call on: an error there is a call that does not fit the signature.
    return bool(client) and client[-1].name not in ("_inner_fn", "_inner")


def push_folder(
    api: HfApi,
    repo_id: str,
    folder: Path,
    *,
    repo_type: str = "model",
    message: str,
    private: bool = False,
    delete: list[str] | None = None,
    **retry,
) -> str:
    """Create the repo if needed and commit `folder`, and the deletion of the repo's files `delete`, as one commit
    (the client makes none if nothing changed: the head is then the commit it was at); returns the head sha."""
    sdk = {"space_sdk": "gradio"} if repo_type == "space" else {}  # the leaderboard Space is a Gradio app
    retried(
        lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **sdk),
        f"{repo_id}: create",
        **retry,
    )
    info = retried(
        lambda: api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type=repo_type,
            commit_message=message,
            delete_patterns=[glob.escape(path) for path in delete or []] or None,
        ),
        f"{repo_id}: commit",
        **retry,
    )
    return info.oid


def tag_commit(api: HfApi, repo_id: str, tag: str, commit: str, *, repo_type: str = "model", **retry) -> bool:
    """Put `tag` on `commit`; False if it is there already. A HubError if it points at another commit: a published
    version never moves (raise ZOO_VERSION for new content)."""
    tagged = retried(lambda: api.list_repo_refs(repo_id, repo_type=repo_type), f"{repo_id}: refs", **retry)
    current = {ref.name: ref.target_commit for ref in tagged.tags}
    if tag in current:
        if current[tag] != commit:
            raise HubError(
                f"{repo_id}: tag {tag} already marks commit {current[tag][:12]}, not the new head {commit[:12]}; "
                "a published version never moves: raise sink_models.evaluation.cards.ZOO_VERSION."
            )
        return False
    retried(lambda: api.create_tag(repo_id, tag=tag, revision=commit, repo_type=repo_type), f"{repo_id}: tag", **retry)
    return True


def append_push_log(path: Path, record: dict) -> None:
    """The pushed commit shas, one JSON object per repo and run, in a local log that is never uploaded."""
    old = path.read_text() if path.exists() else ""
    atomic_write(path, old + json.dumps(record) + "\n")
