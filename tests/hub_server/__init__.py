"""A Hub-compatible HTTP server for offline upload tests (stdlib only).

It answers the routes listed in docs/hub-protocol.md, enough for the real `huggingface_hub` client
(`HfApi`, `hf_hub_download`, `HfFileSystem`), `transformers.from_pretrained` and `datasets.load_dataset`:

    with HubServer() as server:
        api = HfApi(endpoint=server.url, token="hf_dummy")
        api.create_repo("org/model")
        ...
        assert len(server.commits("org/model")) == 2

Modules: `server` (HubServer, the HTTP handler), `routes` (URL patterns, dispatch, error answers), `reads`,
`writes`, `lfs` and `collection` (the handlers of each route family), `storage` (repos, commits, blobs),
`faults` (fail_next, fail_always, trickle) and `messages` (requests, answers, errors).
"""

from .faults import MALFORMED, TRICKLE
from .lfs import SHA256
from .messages import BAD_CREDENTIALS, HubError, RecordedRequest
from .routes import API_ROUTE, LFS_ROUTE, RESOLVE_ROUTE
from .server import HubServer
from .storage import INITIAL_GITATTRIBUTES, LFS_MIN_SIZE, ORG, REPO_TYPES, USER, Commit, Repo, git_blob_oid, lfs_pointer

__all__ = [
    "API_ROUTE",
    "BAD_CREDENTIALS",
    "INITIAL_GITATTRIBUTES",
    "LFS_MIN_SIZE",
    "LFS_ROUTE",
    "MALFORMED",
    "ORG",
    "REPO_TYPES",
    "RESOLVE_ROUTE",
    "SHA256",
    "TRICKLE",
    "USER",
    "Commit",
    "HubError",
    "HubServer",
    "RecordedRequest",
    "Repo",
    "git_blob_oid",
    "lfs_pointer",
]
