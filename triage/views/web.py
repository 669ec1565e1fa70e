"""The daemon's read-only HTTP endpoint: the status page (``/``), ``/metrics`` and ``/healthz``.

The standard library's ThreadingHTTPServer in a daemon thread: no framework, nothing to write,
bound to localhost by default (``[web] listen``). Every answer is read from the database at
request time, so a page or a scrape is never stale and needs no shared memory.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from triage.config import Config
from triage.store.database import Database
from triage.views import dashboard, metrics, status

log = logging.getLogger(__name__)


class Site:
    """What the handlers read: the current config (it changes at a reload) and the database."""

    def __init__(
        self, config: Callable[[], Config], db: Database, started: datetime | None = None
    ) -> None:
        self.config = config
        self.db = db
        self.started = started
        self.registry = metrics.registry_for(config, db, started)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the database answers, every source polled within its window, and
        nothing fails on the way out (forwards failed or stuck retrying, alerts not mailed)."""
        config = self.config()
        try:
            sources = status.source_health(config, self.db, started=self.started)
            outgoing = status.delivery_problems(config, self.db)
        except Exception as exc:  # any driver or schema error: the store does not answer
            log.warning("healthz: the database does not answer: %s", exc)
            reason = f"the database does not answer: {exc.__class__.__name__}"
            return False, {"status": "unhealthy", "reasons": [reason]}
        reasons = [p for s in sources if (p := s.problem(config.alerts.stale_after_minutes))]
        reasons.extend(outgoing)
        body: dict[str, Any] = {
            "status": "unhealthy" if reasons else "ok",
            "sources": {
                s.name: "ok" if s.healthy else "failing" if s.failing else "stale" for s in sources
            },
        }
        if reasons:
            body["reasons"] = reasons
        return not reasons, body


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    disable_nagle_algorithm = True
    server_version = "triage"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        routes = {"/": self._page, "/metrics": self._metrics, "/healthz": self._healthz}
        route = routes.get(path)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        try:
            route()
        except Exception:
            log.exception("web: %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _page(self) -> None:
        site = self.server.site
        page = dashboard.render(site.config(), site.db, started=site.started)
        self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")

    def _metrics(self) -> None:
        body = metrics.exposition(self.server.site.registry)
        self._send(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)

    def _healthz(self) -> None:
        ok, body = self.server.site.health()
        code = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        self._send(code, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, code: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged at DEBUG, not to stderr as the base class does."""
        log.debug("web: %s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], site: Site) -> None:
        self.site = site
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class WebServer:
    """The HTTP server running in a daemon thread."""

    def __init__(self, address: tuple[str, int], site: Site) -> None:
        self._server = _Server(address, site)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="web",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        address = self._server.server_address[0]
        host = address.decode() if isinstance(address, bytes) else address
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> WebServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start(
    config: Callable[[], Config], db: Database, started: datetime | None = None
) -> WebServer | None:
    """Serve on ``[web] listen`` unless disabled; a port in use is logged, not fatal (the worker
    goes on triaging: mail matters more than its dashboard)."""
    settings = config().web
    if not settings.enabled:
        return None
    try:
        server = WebServer(settings.address, Site(config, db, started)).start()
    except OSError as exc:
        log.error(
            "web: cannot listen on %s (%s); no status page, /metrics or /healthz",
            settings.listen,
            exc,
        )
        return None
    log.info("web: status page, /metrics and /healthz on %s", server.url)
    return server
