"""The server itself: `HubServer` (state, lifecycle) and the HTTP handler that feeds it requests."""

from __future__ import annotations

import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .faults import TRICKLE, Fault
from .messages import RecordedRequest
from .routes import Routes
from .storage import INITIAL_GITATTRIBUTES, Repo, git_blob_oid


class HubServer(Routes):
    """An in-memory Hub on 127.0.0.1, served from a background thread; use as a context manager or start/stop."""

    def __init__(self, port: int = 0):
        self._port = port
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {git_blob_oid(INITIAL_GITATTRIBUTES): INITIAL_GITATTRIBUTES}
        self._lfs: dict[str, bytes] = {}
        self._pointers: dict[str, str] = {}
        self._faults: list[Fault] = []
        self._trickles: dict[str, float] = {}
        self._sequence = itertools.count()  # makes commit oids unique even for identical commits in one millisecond
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[RecordedRequest] = []
        self._collections: dict[str, dict] = {}

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
