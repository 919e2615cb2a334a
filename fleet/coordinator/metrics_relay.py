"""One /metrics relay per lab host: the run's Prometheus scrapes every phone of the host through
it, wherever the phone's own /metrics is (a virtual phone's agent on the host's loopback, an
Android phone's behind an ``adb forward`` on the host's loopback).

    relay = MetricsRelay("10.0.0.12")           # the host's node address (loopback if local)
    path = relay.add("pixel-a", 41234)          # -> "/phones/pixel-a/metrics"
    # Prometheus target: 10.0.0.12:<relay.port> with __metrics_path__ = path

It serves GET of registered phones only (never an arbitrary port or path) and reads each phone's
page with a timeout; an unreachable phone answers 503, which Prometheus records as ``up == 0``.
"""

from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FETCH_TIMEOUT_S = 5.0


class MetricsRelay:
    def __init__(self, bind_host: str = "127.0.0.1"):
        self._phones: dict[str, int] = {}
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                port = (
                    relay._phones.get(parts[1])
                    if len(parts) == 3 and parts[0] == "phones" and parts[2] == "metrics"
                    else None
                )
                if port is None:
                    self.send_error(404, "no such phone on this host")
                    return
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/metrics", timeout=FETCH_TIMEOUT_S
                    ) as r:
                        body, ctype = r.read(), r.headers.get("Content-Type", "text/plain")
                except OSError as e:
                    self.send_error(503, f"phone unreachable: {e}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer((bind_host, 0), Handler)
        self._server.daemon_threads = True
        self.host = bind_host
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="relay").start()

    def add(self, phone: str, local_port: int) -> str:
        self._phones[phone] = local_port
        return f"/phones/{phone}/metrics"

    def remove(self, phone: str) -> None:
        self._phones.pop(phone, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
