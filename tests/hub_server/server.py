"""A Hub-compatible HTTP server for offline upload tests (stdlib only).

It answers the routes listed in /work/shared/HUB_PROTOCOL.md, enough for the real `huggingface_hub` client
(`HfApi`, `hf_hub_download`, `HfFileSystem`), `transformers.from_pretrained` and `datasets.load_dataset`:

    with HubServer() as server:
        api = HfApi(endpoint=server.url, token="hf_dummy")
        api.create_repo("org/model")
        ...
        assert len(server.commits("org/model")) == 2

Storage is in memory: repos of type model / dataset / space, each with branches and tags (ref -> commit oid)
and commits (a full tree: path -> git blob oid); blob contents are shared in one content-addressed dict.
Binaries, files the repo's .gitattributes tracks and files over 10 MiB go through LFS as on the Hub: preupload
answers "lfs", the client uploads them through the batch API (basic transfer: PUT, then verify) and commits
`lfsFile` entries, which the tree stores as git-lfs pointer files; `resolve` answers the object itself.
Every request is recorded in `server.requests`, and `fail_next` / `fail_always` inject error answers or
malformed 200 answers (HTML, cut-off JSON, JSON without the expected keys); `trickle` makes answers slow.

Not modelled: xet uploads (tests set HF_HUB_DISABLE_XET=1), multipart LFS uploads (no `chunk_size` is offered),
pull requests (`create_pr` answers 400), read access rules for private repos, deletions of repos / branches /
tags, collection edits beyond creating one and adding items, Space settings, `cardData` parsed from README.md,
and pagination (one page answers all).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

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
TRICKLE = 64  # bytes per chunk of a trickled answer

# /api/{type}s/{namespace}/{name}[/{action}[/{revision}[/{path}]]], as percent-encoded by the client.
API_ROUTE = re.compile(r"/api/(model|dataset|space)s/([^/]+/[^/]+)(?:/([^/]+)(?:/([^/]+)(?:/(.+))?)?)?")
# [/datasets|/spaces]/{namespace}/{name}/resolve/{revision}/{path}; models have no prefix.
RESOLVE_ROUTE = re.compile(r"/(?:(dataset|space)s/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
# [/datasets|/spaces]/{namespace}/{name}.git/info/lfs/objects/{batch | verify | sha256}: the git-lfs API. The Hub's
# upload hrefs are presigned storage URLs; here the object's own URL takes the PUT.
LFS_ROUTE = re.compile(r"/(?:(dataset|space)s/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify|[0-9a-f]{64})")
SHA256 = re.compile(r"[0-9a-f]{64}")

# 200 answers a misbehaving server, mirror or proxy may give, for `fail_next(..., status=200, body=...)`.
MALFORMED = {
    "html": ("text/html", b"<!DOCTYPE html><html><body><h1>Hub mirror</h1><p>Read-only.</p></body></html>"),
    "json": ("application/json", b'{"files": [{"path": "README.md", '),  # cut off
    "keys": ("application/json", b'{"unexpected": true}'),
}

# The client turns a 401 carrying exactly this message into a plain HfHubHTTPError; any other 401 on a repo
# route would read as RepositoryNotFoundError, which would hide a missing token.
BAD_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_oid(content: bytes) -> str:
    """The git blob oid of `content`, as `git hash-object` computes it (and as the client compares it)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS object (git-lfs spec v1)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _now() -> str:
    # The client's `parse_datetime` accepts only this layout.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class RecordedRequest:
    """One request as the server saw it. `mutated` is set when the request changed any repo state."""

    method: str
    path: str  # URL path as sent (percent-encoded), without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int | None = None
    mutated: bool = False

    def json(self) -> object:
        return json.loads(self.body)


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
        return _url_prefix(self.repo_type)


@dataclass
class _Fault:
    status: int
    route_contains: str
    method: str | None
    remaining: int | None  # None: until cleared
    body: str  # "error" (a JSON error message) or a key of MALFORMED


class HubError(Exception):
    """An error answer; `code` becomes the X-Error-Code header the client maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _url_prefix(repo_type: str) -> str:
    """Web URLs of datasets and spaces carry a prefix, models none: /{prefix}{repo_id}."""
    return "" if repo_type == "model" else f"{repo_type}s/"


def _json(data: object, status: int = 200) -> _Response:
    return _Response(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


def _parents(path: str) -> list[str]:
    """The folders above `path`, deepest first: "a/b/c.txt" -> ["a/b", "a"]."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _folders(tree: dict[str, str]) -> set[str]:
    return {folder for path in tree for folder in _parents(path)}


def _folder_oid(tree: dict[str, str], folder: str) -> str | None:
    """A stable id for a folder's content (not git's tree hash, which the client never checks); None if absent."""
    entries = sorted((path, oid) for path, oid in tree.items() if path.startswith(folder + "/"))
    return hashlib.sha1(json.dumps(entries).encode()).hexdigest() if entries else None


def _entry_oid(tree: dict[str, str], path: str) -> str | None:
    return tree.get(path) or _folder_oid(tree, path)


class HubServer:
    """An in-memory Hub on 127.0.0.1, served from a background thread; use as a context manager or start/stop."""

    def __init__(self, port: int = 0):
        self._port = port
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {git_blob_oid(INITIAL_GITATTRIBUTES): INITIAL_GITATTRIBUTES}
        self._lfs: dict[str, bytes] = {}  # sha256 -> verified LFS object
        self._pointers: dict[str, str] = {}  # git oid of a pointer file -> sha256 of its LFS object
        self._faults: list[_Fault] = []
        self._trickles: dict[str, float] = {}  # route_contains -> seconds between chunks of the answer's body
        self._sequence = itertools.count()  # makes commit oids unique even for identical commits in one millisecond
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[RecordedRequest] = []
        self._collections: dict[str, dict] = {}  # slug -> the collection as the API answers it

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        # Port 0 lets the OS pick a free port at bind time, with no window for another process to take it.
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        # A short poll interval keeps stop() quick: shutdown() waits for the serving loop's next poll.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---- test helpers ----------------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        route_contains: str = "commit",
        method: str | None = None,
        body: str = "error",
    ) -> None:
        """Answer `status` to the next `n` requests whose URL path contains `route_contains` (and, if given,
        whose method is `method`), before any routing or auth, with a JSON error message (`body="error"`) or a
        malformed body: "html", "json" (cut off) or "keys" (JSON without the expected keys)."""
        if body != "error" and body not in MALFORMED:
            raise ValueError(f"body={body!r}; allowed: 'error', {', '.join(map(repr, MALFORMED))}")
        with self._lock:
            self._faults.append(_Fault(status, route_contains, method, n, body))

    def fail_always(
        self, status: int = 500, route_contains: str = "commit", method: str | None = None, body: str = "error"
    ) -> None:
        """Answer like `fail_next` to every matching request until `clear_faults()`."""
        self.fail_next(None, status, route_contains, method, body)

    def trickle(self, route_contains: str, pause: float) -> None:
        """Send the body of every answer whose URL path contains `route_contains` in chunks of `TRICKLE` bytes,
        `pause` seconds apart (a slow Hub), until `clear_faults()`."""
        with self._lock:
            self._trickles[route_contains] = pause

    def _pause(self, path: str) -> float | None:
        with self._lock:
            return next((pause for part, pause in self._trickles.items() if part in path), None)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._trickles.clear()

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

    # ---- state -----------------------------------------------------------------------------------------------

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
        date = _now()
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

    # ---- request handling ------------------------------------------------------------------------------------

    def _handle(self, request: RecordedRequest) -> _Response:
        with self._lock:
            self.requests.append(request)
            fault = next(
                (f for f in self._faults if f.route_contains in request.path and f.method in (None, request.method)),
                None,
            )
            if fault is not None and fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
        if fault is not None and fault.body == "error":
            response = _json({"error": f"injected fault {fault.status}"}, fault.status)
        elif fault is not None:
            content_type, body = MALFORMED[fault.body]
            response = _Response(fault.status, body, {"Content-Type": content_type})
        else:
            try:
                response = self._route(request)
            except HubError as error:
                response = self._error(error)
            except Exception as error:
                # A malformed payload (or a bug here) answers 400, not 5xx: the client retries 5xx with backoff
                # for ~20 s on most routes, which would turn a clear failure into a slow one.
                response = self._error(HubError(400, f"Bad request: {error!r}"))
        request.status = response.status
        return response

    def _error(self, error: HubError) -> _Response:
        response = _json({"error": error.message}, error.status)
        # Header values must be latin-1 on one line; paths in messages may be neither. JSON escaping makes them so.
        response.headers |= {"X-Error-Message": json.dumps(error.message)[1:-1], **error.headers}
        if error.code:
            response.headers["X-Error-Code"] = error.code
        return response

    def _route(self, request: RecordedRequest) -> _Response:
        method, path = request.method, request.path
        if path == "/api/whoami-v2" and method == "GET":
            self._require_token(request)
            return _json(
                {
                    "type": "user",
                    "id": "0" * 24,
                    "name": USER,
                    "fullname": "Test User",
                    "orgs": [{"type": "org", "name": ORG, "fullname": "Test Org", "roleInOrg": "admin"}],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                }
            )
        if path == "/api/agent-harnesses" and method == "GET":
            # huggingface_hub fetches this registry from HF_ENDPOINT for its user-agent; an empty one detects nothing.
            return _json({"standardEnvVars": [], "harnesses": {}})
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(request)
        if path == "/api/validate-yaml" and method == "POST":
            return _json({"errors": [], "warnings": []})
        if path.startswith("/api/collections"):
            return self._collection_route(request)
        if match := API_ROUTE.fullmatch(path):
            repo_type, repo_id, action, revision, subpath = match.groups()
            revision = unquote(revision) if revision is not None else None
            # Clients quote the path with safe="" (one segment) or leave its slashes: both arrive here.
            subpath = unquote(subpath) if subpath is not None else ""
            if action is None and method == "GET":
                return self._info(repo_type, repo_id, "main")
            if revision is not None:
                handler = {
                    ("GET", "revision"): self._info_at,
                    ("GET", "tree"): self._tree,
                    ("GET", "commits"): self._list_commits,
                    ("POST", "paths-info"): self._paths_info,
                    ("POST", "branch"): self._create_branch,
                    ("POST", "tag"): self._create_tag,
                    ("POST", "preupload"): self._preupload,
                    ("POST", "commit"): self._commit,
                }.get((method, action))
                if handler is not None:
                    return handler(request, repo_type, repo_id, revision, subpath)
            if action == "refs" and revision is None and method == "GET":
                return self._refs(request, repo_type, repo_id)
        if match := LFS_ROUTE.fullmatch(path):
            repo_type, repo_id, action = match.groups()
            handler = {("POST", "batch"): self._lfs_batch, ("POST", "verify"): self._lfs_verify}.get((method, action))
            if method == "PUT" and SHA256.fullmatch(action):
                handler = self._lfs_put
            if handler is not None:
                return handler(request, repo_type or "model", repo_id, action)
        if method in ("GET", "HEAD") and (match := RESOLVE_ROUTE.fullmatch(path)):
            repo_type, repo_id, revision, filename = match.groups()
            return self._resolve_file(request, repo_type or "model", repo_id, unquote(revision), unquote(filename))
        raise HubError(404, f"No route for {method} {path}")

    def _collection_route(self, request: RecordedRequest) -> _Response:
        """POST /api/collections, GET /api/collections/{slug}, POST /api/collections/{slug}/items: 409 for a title
        the namespace already has (with its slug, which `exists_ok` reads) and for an item already in it."""
        parts = request.path.removeprefix("/api/collections").strip("/")
        with self._lock:
            if request.method == "POST" and not parts:
                self._require_token(request)
                payload = request.json()
                namespace, title = payload["namespace"], payload["title"]
                for slug, collection in self._collections.items():
                    if collection["owner"]["name"] == namespace and collection["title"] == title:
                        return _json({"error": "Collection already exists", "slug": slug}, 409)
                slug = f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}-{next(self._sequence):024x}"
                self._collections[slug] = {
                    "slug": slug,
                    "title": title,
                    "description": payload.get("description"),
                    "owner": {"name": namespace, "type": "org"},
                    "items": [],
                    "lastUpdated": _now(),
                    "position": 0,
                    "private": bool(payload.get("private")),
                    "theme": "indigo",
                    "upvotes": 0,
                }
                request.mutated = True
                return _json(self._collections[slug])
            if request.method == "GET" and not parts:
                owner = (request.query.get("owner") or [None])[0]
                listed = [c for c in self._collections.values() if owner in (None, c["owner"]["name"])]
                # Like the Hub: a preview of the items, and no position (the client numbers the listing itself).
                return _json(
                    [{k: v for k, v in c.items() if k != "position"} | {"items": c["items"][:4]} for c in listed]
                )
            slug, _, action = parts.partition("/items") if parts.endswith("/items") else (parts, "", "")
            collection = self._collections.get(slug)
            if collection is None:
                raise HubError(404, f"Collection {slug} not found")
            if request.method == "GET" and not action:
                return _json(collection)
            if request.method == "POST" and parts.endswith("/items"):
                self._require_token(request)
                item = request.json()["item"]
                if any(i["id"] == item["id"] and i["type"] == item["type"] for i in collection["items"]):
                    return _json({"error": "Item already in the collection"}, 409)
                entry = {"_id": f"{next(self._sequence):024x}", "position": len(collection["items"]), **item}
                collection["items"].append(entry)
                request.mutated = True
                return _json(collection)
        raise HubError(404, f"No route for {request.method} {request.path}")

    def collection(self, namespace: str, title: str) -> dict | None:
        """The collection of that title in that namespace, as the API answers it (None if there is none)."""
        found = [c for c in self._collections.values() if c["owner"]["name"] == namespace and c["title"] == title]
        return found[0] if found else None

    def _require_token(self, request: RecordedRequest) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HubError(401, BAD_CREDENTIALS)

    # ---- routes ----------------------------------------------------------------------------------------------

    def _create_repo(self, request: RecordedRequest) -> _Response:
        self._require_token(request)
        payload = request.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        with self._lock:
            key = (repo_type, repo_id)
            url = f"{self.url}/{_url_prefix(repo_type)}{repo_id}"
            if key in self._repos:
                return _json({"error": "You already created this repo", "url": url}, 409)
            repo = Repo(
                repo_type,
                repo_id,
                private=bool(payload.get("private")) or payload.get("visibility") == "private",
                created_at=_now(),
                sdk=payload.get("sdk"),
            )
            tree = {".gitattributes": git_blob_oid(INITIAL_GITATTRIBUTES)}
            repo.branches["main"] = self._new_commit(repo, None, tree, "initial commit", "").oid
            self._repos[key] = repo
            request.mutated = True
        return _json({"url": url, "name": repo_id, "id": hashlib.sha1(repr(key).encode()).hexdigest()[:24]})

    def _info(self, repo_type: str, repo_id: str, revision: str) -> _Response:
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            siblings = []
            for path, oid in sorted(commit.tree.items()):
                siblings.append({"rfilename": path, "blobId": oid, "size": len(self._content(oid))})
                if lfs := self._lfs_info(oid):
                    siblings[-1]["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
        info = {
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo.sdk is not None:
            info["sdk"] = repo.sdk
        return _json(info)

    def _info_at(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        if subpath:
            raise HubError(404, f"No route for {request.method} {request.path}")
        return self._info(repo_type, repo_id, revision)

    def _tree(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, folder: str):
        recursive = request.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = request.query.get("expand", ["false"])[0].lower() in ("1", "true")
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            paths = set(commit.tree) | _folders(commit.tree)
            if folder and folder not in _folders(commit.tree):
                raise HubError(404, f"{folder} does not exist in {revision}", "EntryNotFound")
            prefix = f"{folder}/" if folder else ""
            below = [p for p in paths if p.startswith(prefix)]
            if not recursive:
                below = [p for p in below if "/" not in p[len(prefix) :]]
            return _json([self._entry(repo, commit, p, expand) for p in sorted(below)])

    def _paths_info(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        # A form, not JSON: `paths=a&paths=b&expand=False`.
        form = parse_qs(request.body.decode())
        paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() in ("1", "true")
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            existing = set(commit.tree) | _folders(commit.tree)
            # Missing paths are left out, not errors: that is how the client tests existence.
            return _json([self._entry(repo, commit, p.strip("/"), expand) for p in paths if p.strip("/") in existing])

    def _refs(self, request: RecordedRequest, repo_type: str, repo_id: str) -> _Response:
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()]
        refs = {"branches": branches, "converts": [], "tags": tags}
        if request.query.get("include_prs"):
            refs["pullRequests"] = []
        return _json(refs)

    def _list_commits(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            history = self._history(repo, self._resolve(repo, revision))
        return _json(
            [
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": USER}]}
                for c in history
            ]
        )

    def _create_branch(self, request: RecordedRequest, repo_type: str, repo_id: str, branch: str, subpath: str):
        self._require_token(request)
        starting_point = (request.json() if request.body else {}).get("startingPoint") or "main"
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self._resolve(repo, starting_point).oid
            request.mutated = True
        return _json({})

    def _create_tag(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        self._require_token(request)
        tag = request.json()["tag"]
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            target = self._resolve(repo, revision)
            if tag in repo.tags:
                raise HubError(409, f"Reference already exists: refs/tags/{tag}")
            repo.tags[tag] = target.oid
            request.mutated = True
        return _json({})

    def _preupload(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        self._require_token(request)
        self._refuse_pull_requests(request)
        files = request.json()["files"]
        with self._lock:
            tree = self._resolve(self._repo(repo_type, repo_id), revision).tree
            gitattributes = self._content(tree[".gitattributes"]).decode() if ".gitattributes" in tree else ""
            tracked = [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line.split()[1:]]
            answers = []
            for f in files:
                sample, size, path = base64.b64decode(f["sample"]), f["size"], f["path"]
                # The Hub's rule: binary content (a NUL byte in the first 512 bytes), a tracked pattern (matched
                # against the name, or the whole path for a pattern with a slash), or a large file.
                lfs = b"\0" in sample or size > LFS_MIN_SIZE or any(_tracks(pattern, path) for pattern in tracked)
                # The current file's oid (sha256 for LFS files) lets the client drop unchanged files.
                oid = tree.get(path)
                oid = self._pointers.get(oid, oid)
                answers.append(
                    {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
                )
        return _json({"files": answers})

    def _refuse_pull_requests(self, request: RecordedRequest) -> None:
        # Not modelled: failing loudly beats silently committing a "PR" to the branch.
        if request.query.get("create_pr"):
            raise HubError(400, "create_pr is not supported by this test server")

    def _commit(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        self._require_token(request)
        self._refuse_pull_requests(request)
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        new_blobs: dict[str, bytes] = {}
        new_pointers: dict[str, str] = {}
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if revision not in repo.branches:
                self._resolve(repo, revision)  # 404 RevisionNotFound for an unknown revision
                raise HubError(400, f"Can only commit to a branch, not to {revision}")
            parent = repo.commits[repo.branches[revision]]
            if header.get("parentCommit") not in (None, parent.oid):
                raise HubError(412, f"parentCommit {header['parentCommit']} is not the head of {revision}")
            # Atomic: the new tree is built aside and the branch moves only once every operation has applied.
            tree = dict(parent.tree)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "").strip("/")
                if not path or any(part in ("", ".", "..") for part in path.split("/")):
                    raise HubError(400, f"Invalid path in commit: {value.get('path')!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value['encoding']}")
                    content = base64.b64decode(value["content"])
                    oid = git_blob_oid(content)
                    new_blobs[oid] = content
                    tree[path] = oid
                elif key == "lfsFile":
                    oid = value.get("oid")
                    # Like the Hub: a pointer to an object this repo never received (uploaded and verified) is refused.
                    if value.get("algo") != "sha256" or oid not in repo.lfs:
                        raise HubError(
                            400,
                            f"Your push was rejected because an LFS pointer pointed to a file that does not exist: "
                            f"{path} (sha256 {oid})",
                        )
                    size = len(self._lfs[oid])
                    if value.get("size", size) != size:
                        raise HubError(400, f"LFS pointer of {path}: size {value['size']}, but the object has {size}")
                    pointer = lfs_pointer(oid, size)
                    new_blobs[git_blob_oid(pointer)] = pointer
                    new_pointers[git_blob_oid(pointer)] = oid
                    tree[path] = git_blob_oid(pointer)
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    inside = [p for p in tree if p.startswith(path + "/")]
                    if not inside:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in inside:
                        del tree[p]
                else:
                    raise HubError(400, f"Unsupported commit operation: {key}")
            if clash := sorted(set(tree) & _folders(tree)):
                raise HubError(400, f"Paths used both as a file and a folder: {clash}")
            self._blobs.update(new_blobs)
            self._pointers.update(new_pointers)
            commit = self._new_commit(repo, parent, tree, header.get("summary", ""), header.get("description", ""))
            repo.branches[revision] = commit.oid
            request.mutated = True
        return _json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.url}/{repo.url_prefix}{repo_id}/commit/{commit.oid}",
                "pullRequestUrl": None,
            }
        )

    def _resolve_file(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, filename: str):
        with self._lock:
            commit = self._resolve(self._repo(repo_type, repo_id), revision)
            oid = commit.tree.get(filename)
            content = self._content(oid) if oid is not None else None
            lfs = self._lfs_info(oid) if oid is not None else None
        if content is None:
            # X-Repo-Commit on the 404 lets hf_hub_download cache the file's absence for that commit.
            raise HubError(404, f"Entry not found: {filename}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{oid}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        if lfs is not None:
            # The Hub redirects to its storage and names the object here: the client caches it by sha256.
            headers |= {"X-Linked-Etag": f'"{lfs["oid"]}"', "X-Linked-Size": str(lfs["size"])}
        # HfFileSystem reads files by ranges ("bytes=a-b", "bytes=a-") and treats 416 as end of file.
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("range", ""))
        if ranged is None or request.method == "HEAD":
            return _Response(200, content, headers)
        first, last = ranged.groups()
        if first:
            start, end = int(first), min(int(last), len(content) - 1) if last else len(content) - 1
        else:  # "bytes=-n": the last n bytes
            start, end = max(len(content) - int(last or 0), 0), len(content) - 1
        if start >= len(content) or start > end:
            return _Response(416, b"", headers | {"Content-Range": f"bytes */{len(content)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return _Response(206, content[start : end + 1], headers)

    # ---- LFS (git-lfs batch API, basic transfer) ---------------------------------------------------------------

    def _lfs_batch(self, request: RecordedRequest, repo_type: str, repo_id: str, action: str) -> _Response:
        """Upload instructions per object: none for an object the repo already has, else an upload href (PUT)
        and a verify href; a malformed object gets a per-object error, as the git-lfs spec says."""
        self._require_token(request)
        payload = request.json()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "Only uploads with the basic transfer are modelled (downloads go through resolve)")
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if ref := (payload.get("ref") or {}).get("name"):
                self._resolve(repo, ref)  # 404 RevisionNotFound for an unknown revision
            base = f"{self.url}/{repo.url_prefix}{repo_id}.git/info/lfs/objects"
            objects = []
            for item in payload["objects"]:
                oid, size = item["oid"], item["size"]
                answer = {"oid": oid, "size": size}
                if not (isinstance(oid, str) and SHA256.fullmatch(oid) and isinstance(size, int) and size >= 0):
                    answer["error"] = {"code": 422, "message": "oid must be a sha256 hex digest and size an int"}
                elif oid in repo.lfs and len(self._lfs[oid]) != size:
                    answer["error"] = {"code": 422, "message": f"size {size}, but the stored object has another"}
                elif oid not in repo.lfs:
                    repo.lfs_uploads.setdefault(oid, None)
                    answer["actions"] = {
                        "upload": {"href": f"{base}/{oid}", "header": {}},
                        "verify": {"href": f"{base}/verify", "header": {}},
                    }
                objects.append(answer)
        response = _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        response.headers["Content-Type"] = "application/vnd.git-lfs+json"
        return response

    def _lfs_put(self, request: RecordedRequest, repo_type: str, repo_id: str, oid: str) -> _Response:
        # The Hub's href is a presigned storage URL: no token, but only for an object a batch call announced.
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if oid not in repo.lfs_uploads:
                raise HubError(403, f"No upload of LFS object {oid} was announced for {repo_id}")
            repo.lfs_uploads[oid] = request.body
            request.mutated = True
        return _Response(200)

    def _lfs_verify(self, request: RecordedRequest, repo_type: str, repo_id: str, action: str) -> _Response:
        """The uploaded bytes must have the claimed sha256 and size; then the repo's commits may point at them."""
        self._require_token(request)
        payload = request.json()
        oid, size = payload["oid"], payload["size"]
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            content = repo.lfs_uploads.get(oid)
            if content is None:
                raise HubError(404, f"LFS object {oid} was not uploaded to {repo_id}")
            if hashlib.sha256(content).hexdigest() != oid or len(content) != size:
                del repo.lfs_uploads[oid]  # a corrupt upload is dropped: the client must upload again
                raise HubError(422, f"LFS object {oid}: the upload does not have that sha256 and size {size}")
            self._lfs[oid] = repo.lfs_uploads.pop(oid)
            repo.lfs.add(oid)
            request.mutated = True
        return _json({"success": True})


def _tracks(pattern: str, path: str) -> bool:
    """Whether a .gitattributes `pattern` covers `path` (without a slash it matches the file name at any depth)."""
    return fnmatch.fnmatchcase(path if "/" in pattern else path.rsplit("/", 1)[-1], pattern.lstrip("/"))


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as the client's pooled httpx session expects; every answer sets
    # Content-Length so the connection stays usable.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for a delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        split = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self._read_body(),
        )
        response = self.server.hub._handle(request)  # type: ignore[attr-defined]
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        pause = self.server.hub._pause(request.path)  # type: ignore[attr-defined]
        if pause is None:
            self.wfile.write(response.body)
            return
        try:
            for start in range(0, len(response.body), TRICKLE):
                self.wfile.write(response.body[start : start + TRICKLE])
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: so does the answer
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed uploads
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: object) -> None:
        """Silent: tests read `HubServer.requests` instead."""
