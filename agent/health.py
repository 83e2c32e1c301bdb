"""Local HTTP health endpoint: GET /healthz (JSON status) and GET /metrics (Prometheus text)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgefleet.errors import UsageError


class HealthServer:
    """Serves on host:port (port 0 picks a free one; see `.port`) from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        status: Callable[[], dict],
        registry: CollectorRegistry,
        before_metrics: Callable[[], None],
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/healthz":
                    body = outer.status()
                    data, ctype = json.dumps(body).encode(), "application/json"
                    code = 200 if body["status"] == "ok" else 503
                elif self.path == "/metrics":
                    outer.before_metrics()
                    data, ctype, code = generate_latest(outer.registry), CONTENT_TYPE_LATEST, 200
                else:
                    data, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:  # quiet: the agent logs what matters
                pass

        self.status = status
        self.registry = registry
        self.before_metrics = before_metrics
        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UsageError(
                f"the health endpoint cannot listen on {host}:{port}: {exc.strerror}",
                "set health.port to a free port (0 picks one) or health.enabled = false",
            ) from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
