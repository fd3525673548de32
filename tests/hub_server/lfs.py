"""The git-lfs batch API (basic transfer): announce, upload (PUT) and verify LFS objects before a commit."""

from __future__ import annotations

import hashlib
import re

from .messages import HubError, RecordedRequest, Response, json_response, require_token
from .storage import Repo, Storage

SHA256 = re.compile(r"[0-9a-f]{64}")


class Lfs(Storage):
    """The LFS routes of `HubServer`; an object becomes usable in commits only once verified."""

    url: str

    def _lfs_batch(self, request: RecordedRequest, repo_type: str, repo_id: str, action: str) -> Response:
        """Upload instructions per object: none for an object the repo already has, else an upload href (PUT)
        and a verify href; a malformed object gets a per-object error, as the git-lfs spec says."""
        require_token(request)
        payload = request.json()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "Only uploads with the basic transfer are modelled (downloads go through resolve)")
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if ref := (payload.get("ref") or {}).get("name"):
                self._resolve(repo, ref)  # 404 RevisionNotFound for an unknown revision
            base = f"{self.url}/{repo.url_prefix}{repo_id}.git/info/lfs/objects"
            objects = [self._lfs_object(repo, base, item["oid"], item["size"]) for item in payload["objects"]]
        response = json_response({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        response.headers["Content-Type"] = "application/vnd.git-lfs+json"
        return response

    def _lfs_object(self, repo: Repo, base: str, oid: object, size: object) -> dict[str, object]:
        """One object's batch answer; an upload it offers is recorded as announced."""
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
        return answer

    def _lfs_put(self, request: RecordedRequest, repo_type: str, repo_id: str, oid: str) -> Response:
        # The Hub's href is a presigned storage URL: no token, but only for an object a batch call announced.
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            if oid not in repo.lfs_uploads:
                raise HubError(403, f"No upload of LFS object {oid} was announced for {repo_id}")
            repo.lfs_uploads[oid] = request.body
            request.mutated = True
        return Response(200)

    def _lfs_verify(self, request: RecordedRequest, repo_type: str, repo_id: str, action: str) -> Response:
        """The uploaded bytes must have the claimed sha256 and size; then the repo's commits may point at them."""
        require_token(request)
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
        return json_response({"success": True})
