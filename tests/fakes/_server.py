"""The common part of the fakes: a threaded HTTP server on 127.0.0.1 with injectable failures.

Each fake subclasses :class:`FakeServer` and implements ``handle(request)`` returning a
:class:`Reply`. Tests queue failures with :meth:`FakeServer.fail_next` (an HTTP error, a
malformed or a truncated body), served before the normal answers, and read what was asked in
``requests``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        """A query (or form/JSON body) argument."""
        if name in self.query:
            return self.query[name][-1]
        return default


@dataclass
class Reply:
    """What the fake answers: ``truncate`` announces more bytes than it sends, then hangs up."""

    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    truncate: bool = False


class FakeServer:
    """Serves ``handle`` on a free loopback port; use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._failures: list[Reply] = []
        self.lock = threading.RLock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._serve(self)

            def do_POST(self) -> None:
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests read ``requests`` instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, reply: Reply, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``reply`` instead of the normal answer."""
        with self.lock:
            self._failures.extend([reply] * times)

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        query = parse_qs(split.query, keep_blank_values=True)
        if body and handler.headers.get("Content-Type", "").startswith("application/json"):
            data = json.loads(body)
            query.update({k: [v if isinstance(v, str) else json.dumps(v)] for k, v in data.items()})
        elif body:
            query.update(parse_qs(body.decode(), keep_blank_values=True))
        request = Request(handler.command, split.path, query, dict(handler.headers), body)
        with self.lock:
            self.requests.append(request)
            reply = self._failures.pop(0) if self._failures else None
            if reply is None:
                reply = self.handle(request)
            else:
                reply = Reply(
                    reply.status,
                    reply.body,
                    {**self.headers(request), **reply.headers},
                    reply.truncate,
                )
        _write(handler, reply)

    def headers(self, request: Request) -> dict[str, str]:
        """Headers every answer carries (X: the rate-limit headers)."""
        return {}


def _write(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
    handler.send_response(reply.status)
    content_type = "application/json; charset=utf-8"
    for name, value in reply.headers.items():
        if name.lower() == "content-type":
            content_type = value
        else:
            handler.send_header(name, value)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data) * 2 if reply.truncate else len(data)))
    if reply.truncate:
        handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(data)
    if reply.truncate:
        handler.close_connection = True
