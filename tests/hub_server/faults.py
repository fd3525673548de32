"""Fault injection: error or malformed answers in place of the real ones, and answers sent slowly."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .messages import RecordedRequest, Response, json_response

TRICKLE = 64  # bytes per chunk of a trickled answer

# 200 answers a misbehaving server, mirror or proxy may give, for `fail_next(..., status=200, body=...)`.
MALFORMED = {
    "html": ("text/html", b"<!DOCTYPE html><html><body><h1>Hub mirror</h1><p>Read-only.</p></body></html>"),
    "json": ("application/json", b'{"files": [{"path": "README.md", '),  # cut off
    "keys": ("application/json", b'{"unexpected": true}'),
}


@dataclass
class Fault:
    status: int
    route_contains: str
    method: str | None
    remaining: int | None  # None: until cleared
    body: str  # "error" (a JSON error message) or a key of MALFORMED

    def response(self) -> Response:
        if self.body == "error":
            return json_response({"error": f"injected fault {self.status}"}, self.status)
        content_type, body = MALFORMED[self.body]
        return Response(self.status, body, {"Content-Type": content_type})


class Faults:
    """The fault settings of `HubServer`, which tests change while it serves."""

    _lock: threading.Lock
    _faults: list[Fault]
    _trickles: dict[str, float]  # route_contains -> seconds between chunks of the answer's body

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
            self._faults.append(Fault(status, route_contains, method, n, body))

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

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._trickles.clear()

    def _pause(self, path: str) -> float | None:
        with self._lock:
            return next((pause for part, pause in self._trickles.items() if part in path), None)

    def _take_fault(self, request: RecordedRequest) -> Fault | None:
        """The first fault that matches `request`, counted as used; the caller holds `_lock`."""
        fault = next(
            (f for f in self._faults if f.route_contains in request.path and f.method in (None, request.method)),
            None,
        )
        if fault is not None and fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults.remove(fault)
        return fault
