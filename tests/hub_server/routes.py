"""Routing: the URL patterns, which handler answers a request, and how errors and faults become answers."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

from .collection import Collections
from .faults import Faults
from .lfs import SHA256, Lfs
from .messages import HubError, RecordedRequest, Response, json_response, require_token
from .reads import Reads
from .storage import ORG, USER
from .writes import Writes

# /api/{type}s/{namespace}/{name}[/{action}[/{revision}[/{path}]]], as percent-encoded by the client.
API_ROUTE = re.compile(r"/api/(model|dataset|space)s/([^/]+/[^/]+)(?:/([^/]+)(?:/([^/]+)(?:/(.+))?)?)?")
# [/datasets|/spaces]/{namespace}/{name}/resolve/{revision}/{path}; models have no prefix.
RESOLVE_ROUTE = re.compile(r"/(?:(dataset|space)s/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")
# [/datasets|/spaces]/{namespace}/{name}.git/info/lfs/objects/{batch | verify | sha256}: the git-lfs API. The Hub's
# upload hrefs are presigned storage URLs; here the object's own URL takes the PUT.
LFS_ROUTE = re.compile(r"/(?:(dataset|space)s/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify|[0-9a-f]{64})")

WHOAMI = {
    "type": "user",
    "id": "0" * 24,
    "name": USER,
    "fullname": "Test User",
    "orgs": [{"type": "org", "name": ORG, "fullname": "Test Org", "roleInOrg": "admin"}],
    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
}


class Routes(Reads, Writes, Lfs, Collections, Faults):
    """Request handling of `HubServer`: record the request, inject a fault or route it, answer errors as JSON."""

    requests: list[RecordedRequest]

    def _handle(self, request: RecordedRequest) -> Response:
        with self._lock:
            self.requests.append(request)
            fault = self._take_fault(request)
        if fault is not None:
            response = fault.response()
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

    def _error(self, error: HubError) -> Response:
        response = json_response({"error": error.message}, error.status)
        # Header values must be latin-1 on one line; paths in messages may be neither. JSON escaping makes them so.
        response.headers |= {"X-Error-Message": json.dumps(error.message)[1:-1], **error.headers}
        if error.code:
            response.headers["X-Error-Code"] = error.code
        return response

    def _route(self, request: RecordedRequest) -> Response:
        # In this order: a path that no handler of one family takes may still match the next family's pattern.
        for family in (self._fixed_route, self._api_route, self._lfs_route, self._resolve_route):
            if (response := family(request)) is not None:
                return response
        raise HubError(404, f"No route for {request.method} {request.path}")

    def _fixed_route(self, request: RecordedRequest) -> Response | None:
        """The routes outside any repo."""
        method, path = request.method, request.path
        if path == "/api/whoami-v2" and method == "GET":
            require_token(request)
            return json_response(WHOAMI)
        if path == "/api/agent-harnesses" and method == "GET":
            # huggingface_hub fetches this registry from HF_ENDPOINT for its user-agent; an empty one detects nothing.
            return json_response({"standardEnvVars": [], "harnesses": {}})
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(request)
        if path == "/api/validate-yaml" and method == "POST":
            return json_response({"errors": [], "warnings": []})
        if path.startswith("/api/collections"):
            return self._collection_route(request)
        return None

    def _api_route(self, request: RecordedRequest) -> Response | None:
        """/api/{type}s/{repo}[/{action}[/{revision}[/{path}]]]: repo info, refs, and the per-revision routes."""
        if (match := API_ROUTE.fullmatch(request.path)) is None:
            return None
        method = request.method
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
        return None

    def _lfs_route(self, request: RecordedRequest) -> Response | None:
        if (match := LFS_ROUTE.fullmatch(request.path)) is None:
            return None
        method = request.method
        repo_type, repo_id, action = match.groups()
        handler = {("POST", "batch"): self._lfs_batch, ("POST", "verify"): self._lfs_verify}.get((method, action))
        if method == "PUT" and SHA256.fullmatch(action):
            handler = self._lfs_put
        if handler is not None:
            return handler(request, repo_type or "model", repo_id, action)
        return None

    def _resolve_route(self, request: RecordedRequest) -> Response | None:
        if request.method not in ("GET", "HEAD") or (match := RESOLVE_ROUTE.fullmatch(request.path)) is None:
            return None
        repo_type, repo_id, revision, filename = match.groups()
        return self._resolve_file(request, repo_type or "model", repo_id, unquote(revision), unquote(filename))
