"""A loopback HTTP server for tests and benchmarks: static files with HTTP range requests, plus JSON routes.

It binds 127.0.0.1 only and counts the bytes of the file bodies it serves (per file name, and in
all), so tests can check that a windowed read of a COG fetches only part of it and benchmarks can
measure two readers the same way.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

__all__ = ["Api", "LoopbackServer", "Reply"]

#: (method, path, body) -> JSON-serialisable answer, an int HTTP error status, a :class:`Reply`,
#: or None when the route is not handled.
Api = Callable[[str, str, bytes | None], object | None]


@dataclass(frozen=True)
class Reply:
    """A non-JSON answer of an API route (binary body, headers, or a deliberately cut connection).

    Attributes:
        body: the response body.
        status: HTTP status.
        content_type: ``Content-Type`` header.
        headers: extra headers.
        cut_after: send only this many bytes of ``body`` (``Content-Length`` announces all of it),
            then close the connection: a connection dropped mid-file.
    """

    body: bytes
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None


class _Server(ThreadingHTTPServer):
    """The HTTP server of a :class:`LoopbackServer` (which its handlers reach as ``loopback``)."""

    loopback: LoopbackServer


class _Handler(BaseHTTPRequestHandler):
    """Answers one request for the :class:`LoopbackServer` that owns the HTTP server."""

    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(reply.body[:reply.cut_after])
        if reply.cut_after is not None:
            self.close_connection = True

    def _json(self, body: bytes | None) -> bool:
        owner = self.server.loopback
        owner.request_headers.append(dict(self.headers.items()))
        if owner.api is None:
            return False
        answer = owner.api(self.command, self.path, body)
        if answer is None:
            return False
        if isinstance(answer, int):  # an HTTP error status
            self.send_error(answer)
            return True
        if isinstance(answer, Reply):
            self._send(answer)
            return True
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def _file(self, head: bool) -> None:
        owner = self.server.loopback
        path_part, _, query = self.path.lstrip("/").partition("?")
        if query:
            owner.queries.add(query)
        path = (owner.root / path_part).resolve()
        if owner.root.resolve() not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            first, _, last = ranged[6:].split(",")[0].partition("-")
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if not head:
            with path.open("rb") as file:  # only the range: a COG's block, not the whole file
                file.seek(start)
                chunk = file.read(end - start + 1)
            cut = owner.cut_next.pop(path.name, None)
            if cut is not None:
                chunk = chunk[:cut]
                self.close_connection = True
            self.wfile.write(chunk)
            with owner._count_lock:
                owner.bytes_served[path.name] += len(chunk)

    def do_GET(self) -> None:
        if not self._json(None):
            self._file(head=False)

    def do_HEAD(self) -> None:
        self._file(head=True)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._json(body):
            self.send_error(404)


class LoopbackServer:
    """Serve ``root`` (files, with Range support) and ``api`` routes on 127.0.0.1."""

    def __init__(self, root: Path, api: Api | None = None) -> None:
        self.root = root
        self.api = api
        #: bytes of file response bodies sent, per file name (use :attr:`total_bytes_served` while serving).
        self.bytes_served: Counter[str] = Counter()
        self._count_lock = threading.Lock()  # handler threads add to bytes_served at the same time
        self.queries: set[str] = set()
        #: file name -> bytes after which the next GET of that file drops the connection (once).
        self.cut_next: dict[str, int] = {}
        #: request headers of every request, in order (e.g. to check authentication).
        self.request_headers: list[dict[str, str]] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.loopback = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def total_bytes_served(self) -> int:
        """Bytes of file response bodies sent so far, all files together."""
        with self._count_lock:
            return sum(self.bytes_served.values())

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
