"""The local Hub-compatible test server; the code is in server.py."""

from .server import LFS_MIN_SIZE, HubServer, git_blob_oid, lfs_pointer

__all__ = ["LFS_MIN_SIZE", "HubServer", "git_blob_oid", "lfs_pointer"]
