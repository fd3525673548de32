"""The in-memory Hub state (repos, commits, blobs, LFS objects) and the lookups over it."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .messages import HubError

USER = "test-user"
ORG = "test-org"
REPO_TYPES = ("model", "dataset", "space")

# What the Hub commits on repo creation (shortened): a new repo already has one commit on main.
INITIAL_GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.jpg filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
"""
LFS_MIN_SIZE = 10 * 1024 * 1024  # larger files go through LFS whatever their name


def git_blob_oid(content: bytes) -> str:
    """The git blob oid of `content`, as `git hash-object` computes it (and as the client compares it)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS object (git-lfs spec v1)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now() -> str:
    # The client's `parse_datetime` accepts only this layout.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    tree: dict[str, str]  # path -> blob oid


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    sdk: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # sha256 of the verified LFS objects this repo's commits may use
    lfs_uploads: dict[str, bytes | None] = field(default_factory=dict)  # announced by a batch call -> bytes PUT

    @property
    def url_prefix(self) -> str:
        return url_prefix(self.repo_type)


def url_prefix(repo_type: str) -> str:
    """Web URLs of datasets and spaces carry a prefix, models none: /{prefix}{repo_id}."""
    return "" if repo_type == "model" else f"{repo_type}s/"


def _parents(path: str) -> list[str]:
    """The folders above `path`, deepest first: "a/b/c.txt" -> ["a/b", "a"]."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def folders(tree: dict[str, str]) -> set[str]:
    return {folder for path in tree for folder in _parents(path)}


def _folder_oid(tree: dict[str, str], folder: str) -> str | None:
    """A stable id for a folder's content (not git's tree hash, which the client never checks); None if absent."""
    entries = sorted((path, oid) for path, oid in tree.items() if path.startswith(folder + "/"))
    return hashlib.sha1(json.dumps(entries).encode()).hexdigest() if entries else None


def _entry_oid(tree: dict[str, str], path: str) -> str | None:
    return tree.get(path) or _folder_oid(tree, path)


class Storage:
    """The repo state of `HubServer`: the `_`-methods expect the caller to hold `_lock`, the public ones take it."""

    _lock: threading.Lock
    _repos: dict[tuple[str, str], Repo]
    _blobs: dict[str, bytes]  # git blob oid -> content
    _lfs: dict[str, bytes]  # sha256 -> verified LFS object
    _pointers: dict[str, str]  # git oid of a pointer file -> sha256 of its LFS object
    _sequence: itertools.count

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """Commit oids reachable from `revision`, newest first."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return [commit.oid for commit in self._history(repo, self._resolve(repo, revision))]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of `revision`: path -> content."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return {path: self._content(oid) for path, oid in self._resolve(repo, revision).tree.items()}

    def lfs_paths(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> set[str]:
        """The files of `revision` stored as LFS objects (the tree holds their pointer files)."""
        with self._lock:
            tree = self._resolve(self._repo(repo_type, repo_id), revision).tree
            return {path for path, oid in tree.items() if oid in self._pointers}

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        try:
            return self._repos[repo_type, repo_id]
        except KeyError:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound") from None

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        """A tag, a branch or a full commit oid -> its commit (a tag wins over a same-named branch, as in git)."""
        oid = repo.tags.get(revision) or repo.branches.get(revision)
        if oid is None and revision in repo.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _content(self, oid: str) -> bytes:
        """A file's content: the blob itself, or the LFS object its pointer names."""
        return self._lfs[self._pointers[oid]] if oid in self._pointers else self._blobs[oid]

    def _lfs_info(self, oid: str) -> dict[str, object] | None:
        """An LFS file's `lfs` entry in trees (None for a regular file); siblings name `oid` "sha256"."""
        if oid not in self._pointers:
            return None
        sha256 = self._pointers[oid]
        return {"oid": sha256, "size": len(self._lfs[sha256]), "pointerSize": len(self._blobs[oid])}

    def _history(self, repo: Repo, commit: Commit) -> list[Commit]:
        history = [commit]
        while history[-1].parent is not None:
            history.append(repo.commits[history[-1].parent])
        return history

    def _new_commit(self, repo: Repo, parent: Commit | None, tree: dict[str, str], title: str, message: str) -> Commit:
        date = now()
        seed = json.dumps([parent and parent.oid, sorted(tree.items()), title, message, date, next(self._sequence)])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent and parent.oid, title, message, date, tree)
        repo.commits[commit.oid] = commit
        return commit

    def _last_commit(self, repo: Repo, commit: Commit, path: str) -> dict[str, str]:
        """The newest commit, going back from `commit`, that changed `path` (the tree's `expand` answer)."""
        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if _entry_oid(parent.tree, path) != _entry_oid(current.tree, path):
                break
            current = parent
        return {"id": current.oid, "title": current.title, "date": current.date}

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, object]:
        """A tree / paths-info entry of a file or folder of `commit`."""
        if path in commit.tree:
            oid = commit.tree[path]
            entry = {"type": "file", "oid": oid, "size": len(self._content(oid)), "path": path}
            if lfs := self._lfs_info(oid):
                entry["lfs"] = lfs
        else:
            entry = {"type": "directory", "oid": _folder_oid(commit.tree, path), "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path)
        return entry
