"""A host's /metrics relay: the run's Prometheus reaches a phone whose /metrics is on its host's
loopback (an adb forward, a virtual agent) through it, and through it only that."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from fleet.coordinator.metrics_relay import MetricsRelay


def test_the_relay_serves_registered_phones_only():
    registry = CollectorRegistry()
    Counter("slmfleet_test_total", "a counter", registry=registry).inc(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    relay = MetricsRelay("127.0.0.1")
    try:
        path = relay.add("pixel-a", server.server_address[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.port}{path}", timeout=10) as r:
            assert b"slmfleet_test_total 3.0" in r.read()
            assert r.headers["Content-Type"].startswith("text/plain")
        for bad in ("/phones/other/metrics", "/phones/pixel-a/../../etc/passwd", "/", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{relay.port}{bad}", timeout=10)
            assert e.value.code == 404
        server.shutdown()
        server.server_close()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{relay.port}{path}", timeout=10)
        assert e.value.code == 503  # the phone is gone: Prometheus records up == 0
        relay.remove("pixel-a")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{relay.port}{path}", timeout=10)
        assert e.value.code == 404
    finally:
        relay.close()
        server.server_close()
