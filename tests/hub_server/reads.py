"""The read routes: repo info, trees, paths-info, refs, commit lists and file downloads (resolve)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from .messages import HubError, RecordedRequest, Response, json_response
from .storage import USER, Storage, folders


class Reads(Storage):
    """The read routes of `HubServer`; none of them needs a token."""

    def _info(self, repo_type: str, repo_id: str, revision: str) -> Response:
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
        return json_response(info)

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
            paths = set(commit.tree) | folders(commit.tree)
            if folder and folder not in folders(commit.tree):
                raise HubError(404, f"{folder} does not exist in {revision}", "EntryNotFound")
            prefix = f"{folder}/" if folder else ""
            below = [p for p in paths if p.startswith(prefix)]
            if not recursive:
                below = [p for p in below if "/" not in p[len(prefix) :]]
            return json_response([self._entry(repo, commit, p, expand) for p in sorted(below)])

    def _paths_info(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        # A form, not JSON: `paths=a&paths=b&expand=False`.
        form = parse_qs(request.body.decode())
        paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() in ("1", "true")
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            existing = set(commit.tree) | folders(commit.tree)
            # Missing paths are left out, not errors: that is how the client tests existence.
            return json_response(
                [self._entry(repo, commit, p.strip("/"), expand) for p in paths if p.strip("/") in existing]
            )

    def _refs(self, request: RecordedRequest, repo_type: str, repo_id: str) -> Response:
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()]
        refs = {"branches": branches, "converts": [], "tags": tags}
        if request.query.get("include_prs"):
            refs["pullRequests"] = []
        return json_response(refs)

    def _list_commits(self, request: RecordedRequest, repo_type: str, repo_id: str, revision: str, subpath: str):
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            history = self._history(repo, self._resolve(repo, revision))
        return json_response(
            [
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": USER}]}
                for c in history
            ]
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
            return Response(200, content, headers)
        first, last = ranged.groups()
        if first:
            start, end = int(first), min(int(last), len(content) - 1) if last else len(content) - 1
        else:  # "bytes=-n": the last n bytes
            start, end = max(len(content) - int(last or 0), 0), len(content) - 1
        if start >= len(content) or start > end:
            return Response(416, b"", headers | {"Content-Range": f"bytes */{len(content)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return Response(206, content[start : end + 1], headers)
