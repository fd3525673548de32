"""The write routes: create repos, branches and tags, preupload, and commit."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json

from .messages import HubError, RecordedRequest, Response, json_response, require_token
from .storage import (
    INITIAL_GITATTRIBUTES,
    LFS_MIN_SIZE,
    REPO_TYPES,
    USER,
    Repo,
    Storage,
    folders,
    git_blob_oid,
    lfs_pointer,
    now,
    url_prefix,
)


def _tracks(pattern: str, path: str) -> bool:
    """Whether a .gitattributes `pattern` covers `path` (without a slash it matches the file name at any depth)."""
    return fnmatch.fnmatchcase(path if "/" in pattern else path.rsplit("/", 1)[-1], pattern.lstrip("/"))


def _refuse_pull_requests(request: RecordedRequest) -> None:
    # Not modelled: failing loudly beats silently committing a "PR" to the branch.
    if request.query.get("create_pr"):
        raise HubError(400, "create_pr is not supported by this test server")


class Writes(Storage):
    """The write routes of `HubServer`; each needs a token and sets `request.mutated` once it changed state."""

    url: str

    def _create_repo(self, request: RecordedRequest) -> Response:
        require_token(request)
        payload = request.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        with self._lock:
            key = (repo_type, repo_id)
            url = f"{self.url}/{url_prefix(repo_type)}{repo_id}"
            if key in self._repos:
                return json_response({"error": "You already created this repo", "url": url}, 409)
            repo = Repo(
                repo_type,
                repo_id,
                private=bool(payload.get("private")) or payload.get("visibility") == "private",
                created_at=now(),
                sdk=payload.get("sdk"),
            )
            tree = {".gitattributes": git_blob_oid(INITIAL_GITATTRIBUTES)}
            repo.branches["main"] = self._new_commit(repo, None, tree, "initial commit", "").oid
            self._repos[key] = repo
            request.mutated = True
        return json_response({"url": url, "name": repo_id, "id": hashlib.sha1(repr(key).encode()).hexdigest()[:24]})

    def _create_branch(self, request: RecordedRequest, repo_type: str, repo_id: str, branch: str, subpath: str):
        require_token(request)
        starting_point = (request.json() if request.body else {}).get("startingPoint") or "main"
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self._resolve(repo, starting_point).oid
            request.mutated = True
        return json_response({})

    def _create_tag(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        require_token(request)
        tag = request.json()["tag"]
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            target = self._resolve(repo, revision)
            if tag in repo.tags:
                raise HubError(409, f"Reference already exists: refs/tags/{tag}")
            repo.tags[tag] = target.oid
            request.mutated = True
        return json_response({})

    def _preupload(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        require_token(request)
        _refuse_pull_requests(request)
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
        return json_response({"files": answers})

    def _commit(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        require_token(request)
        _refuse_pull_requests(request)
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
                self._apply(repo, tree, line, new_blobs, new_pointers)
            if clash := sorted(set(tree) & folders(tree)):
                raise HubError(400, f"Paths used both as a file and a folder: {clash}")
            self._blobs.update(new_blobs)
            self._pointers.update(new_pointers)
            commit = self._new_commit(repo, parent, tree, header.get("summary", ""), header.get("description", ""))
            repo.branches[revision] = commit.oid
            request.mutated = True
        return json_response(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.url}/{repo.url_prefix}{repo_id}/commit/{commit.oid}",
                "pullRequestUrl": None,
            }
        )

    def _apply(
        self, repo: Repo, tree: dict[str, str], line: dict, new_blobs: dict[str, bytes], new_pointers: dict[str, str]
    ) -> None:
        """One commit operation on `tree`; its new blobs and pointers wait aside until the whole commit applies."""
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
            pointer = self._pointer_file(repo, path, value)
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

    def _pointer_file(self, repo: Repo, path: str, value: dict) -> bytes:
        """The pointer file of an `lfsFile` operation, whose object this repo must have verified."""
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
        return lfs_pointer(oid, size)
