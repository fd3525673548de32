"""What a request and an answer look like inside the server, and the error that becomes an error answer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# The client turns a 401 carrying exactly this message into a plain HfHubHTTPError; any other 401 on a repo
# route would read as RepositoryNotFoundError, which would hide a missing token.
BAD_CREDENTIALS = "Invalid credentials in Authorization header"


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


class HubError(Exception):
    """An error answer; `code` becomes the X-Error-Code header the client maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: object, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


def require_token(request: RecordedRequest) -> None:
    """Any bearer token passes: the server checks that the client sends one, not whose it is."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HubError(401, BAD_CREDENTIALS)
