"""Dashboards come from one source and query only what the code exports; the Grafana push is
checked against a local stand-in of Grafana's HTTP API (no Grafana server can be installed on
the build machines): it checks paths, the auth header, overwrite, uid and folderUid as Grafana's
HTTP API documents them, and keeps what was created so a second push can be compared."""

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agents.agent_metrics import AgentMetrics
from fleet.observe.coordinator_metrics import FleetMetrics
from fleet.observe.dashboards import DATASOURCE_UID, FOLDER_UID, all_dashboards, m
from fleet.records import PhoneProfile

ROOT = Path(__file__).resolve().parent.parent
METRIC = re.compile(r"\bslmfleet_[a-z0-9_]+")


def registered_series() -> set[str]:
    """Every series name the real exporters can expose, read from their registries."""
    out = set()
    for registry in (
        AgentMetrics(PhoneProfile("p")).registry,
        FleetMetrics(run_id="r", experiment="e").registry,
    ):
        for family in registry.collect():
            if family.type == "histogram":
                out |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
            elif family.type == "counter":
                out.add(f"{family.name}_total")
            elif family.type == "info":
                out.add(f"{family.name}_info")
            else:
                out.add(family.name)
    return out


def expressions(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, variable query and annotation of a board."""
    out = [(f"panel {p['title']}", t["expr"]) for p in board["panels"] for t in p["targets"]]
    out += [
        (f"variable {v['name']}", v["query"])
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    out += [(f"annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"]]
    return out


def test_every_panel_queries_only_registered_metrics():
    names = registered_series()
    seen = set()
    for uid, board in all_dashboards().items():
        assert board["panels"], uid
        for panel in board["panels"]:
            assert panel["targets"], panel["title"]
        for where, expr in expressions(board):
            used = METRIC.findall(expr)
            assert used, f"{uid}/{where}: no metric in {expr}"
            unknown = set(used) - names
            assert not unknown, f"{uid}/{where} queries {unknown}"
            seen |= set(used)
    assert len(seen) >= 15  # the dashboards cover the exported metrics broadly


def test_every_query_is_one_runs_and_uses_only_the_boards_variables():
    variable = re.compile(r"\$(?!__)(\w+)")
    for uid, board in all_dashboards().items():
        defined = {v["name"] for v in board["templating"]["list"]}
        assert {"DS_PROMETHEUS", "run"} <= defined, uid
        for where, expr in expressions(board):
            if where != "variable run":
                assert 'run="$run"' in expr, f"{uid}/{where} mixes runs: {expr}"
            undefined = set(variable.findall(expr)) - defined
            assert not undefined, f"{uid}/{where} uses undefined {undefined}"


def test_paradigm_board_selects_run_phone_paradigm_phase_app_and_model():
    board = all_dashboards()["slmfleet-paradigms"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["DS_PROMETHEUS", "run", "phone", "paradigm", "phase", "app", "model"]
    phase = next(v for v in board["templating"]["list"] if v["name"] == "phase")
    assert phase["current"]["value"] == "corun"  # the comparison opens on the co-run
    for panel in board["panels"]:
        for target in panel["targets"]:
            assert 'phase=~"$phase"' in target["expr"], panel["title"]


def test_every_panel_has_a_description_a_unit_and_the_datasource_variable():
    for uid, board in all_dashboards().items():
        ds = next(v for v in board["templating"]["list"] if v["name"] == "DS_PROMETHEUS")
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"
        for panel in board["panels"]:
            assert panel.get("description", "").strip(), f"{uid}/{panel['title']}"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{uid}/{panel['title']}"
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs) and all(refs), f"{uid}/{panel['title']}"
        assert DATASOURCE_UID not in json.dumps(board["panels"])  # no hard-coded uid


def test_trial_workloads_and_phones_down_are_annotations():
    for uid, board in all_dashboards().items():
        annotations = {a["name"]: a for a in board["annotations"]["list"]}
        assert set(annotations) == {"trial workloads", "phone down"}, uid
        workloads = annotations["trial workloads"]
        assert "slmfleet_workload_running" in workloads["expr"]
        assert workloads["titleFormat"] and workloads["tagKeys"] == "phone,paradigm,phase"


def test_committed_dashboards_match_their_source():
    for uid, board in all_dashboards().items():
        committed = ROOT / "dashboards" / f"{uid}.json"
        assert committed.is_file(), f"run: fleet dashboards build ({committed} missing)"
        assert json.loads(committed.read_text()) == board, f"{committed} drifted: rebuild"


def test_metric_helper_refuses_unknown_names():
    with pytest.raises(KeyError):
        m("request_latency_seconds")
    with pytest.raises(KeyError):
        m("phone_up", "_bucket")


def test_phone_dashboard_shows_one_phone():
    board = all_dashboards()["slmfleet-phone"]
    phone = next(v for v in board["templating"]["list"] if v["name"] == "phone")
    assert not phone["multi"] and not phone.get("includeAll")
    assert all('phone=~"$phone"' in t["expr"] for p in board["panels"] for t in p["targets"])


class GrafanaStandIn(BaseHTTPRequestHandler):
    """Grafana's HTTP API, the part `fleet dashboards push` uses."""

    token = "secret-token"
    state: dict = {}
    calls: list = []

    def log_message(self, *args):
        pass

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def _authorized(self):
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._reply(401, {"message": "Unauthorized"})
            return False
        return True

    def do_GET(self):
        self.calls.append(("GET", self.path))
        if not self._authorized():
            return
        if self.path == f"/api/datasources/uid/{DATASOURCE_UID}":
            ds = self.state.get("datasource")
            return self._reply(200, ds) if ds else self._reply(404, {"message": "not found"})
        if self.path == f"/api/folders/{FOLDER_UID}":
            folder = self.state.get("folder")
            return self._reply(200, folder) if folder else self._reply(404, {"message": "nf"})
        self._reply(404, {"message": f"no route {self.path}"})

    def do_POST(self):
        body = self._body()
        self.calls.append(("POST", self.path))
        if not self._authorized():
            return
        if self.path == "/api/datasources":
            assert body["uid"] == DATASOURCE_UID and body["type"] == "prometheus"
            self.state["datasource"] = body
            return self._reply(200, {"datasource": body, "message": "Datasource added"})
        if self.path == "/api/folders":
            assert body == {"title": "SLM fleet", "uid": FOLDER_UID}
            self.state["folder"] = body
            return self._reply(200, body)
        if self.path == "/api/dashboards/db":
            dash = body["dashboard"]
            problems = []
            if body.get("overwrite") is not True:
                problems.append("overwrite must be true for an idempotent push")
            if body.get("folderUid") != FOLDER_UID or "folder" not in self.state:
                problems.append("folderUid must name an existing folder")
            if not dash.get("uid") or dash.get("id") is not None:
                problems.append("a dashboard is addressed by uid, with id null")
            if problems:
                return self._reply(400, {"message": "; ".join(problems)})
            self.state.setdefault("dashboards", {})[dash["uid"]] = dash
            return self._reply(200, {"status": "success", "uid": dash["uid"]})
        self._reply(404, {"message": f"no route {self.path}"})

    def do_PUT(self):
        body = self._body()
        self.calls.append(("PUT", self.path))
        if not self._authorized():
            return
        if self.path == f"/api/datasources/uid/{DATASOURCE_UID}":
            self.state["datasource"] = body
            return self._reply(200, {"message": "Datasource updated"})
        self._reply(404, {"message": f"no route {self.path}"})


@pytest.fixture
def grafana():
    GrafanaStandIn.state, GrafanaStandIn.calls = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), GrafanaStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def push(url, token, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet.coordinator.cli",
            "dashboards",
            "push",
            "--grafana-url",
            url,
            "--token",
            token,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_push_creates_then_updates_idempotently(grafana):
    first = push(grafana, "secret-token", "--prometheus-url", "http://prom:9090")
    assert first.returncode == 0, first.stderr
    after_first = json.loads(json.dumps(GrafanaStandIn.state))
    assert set(after_first["dashboards"]) == set(all_dashboards())
    assert after_first["datasource"]["url"] == "http://prom:9090"
    assert ("POST", "/api/datasources") in GrafanaStandIn.calls
    GrafanaStandIn.calls.clear()
    second = push(grafana, "secret-token", "--prometheus-url", "http://prom:9090")
    assert second.returncode == 0, second.stderr
    assert GrafanaStandIn.state == after_first  # the same state again
    assert ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}") in GrafanaStandIn.calls
    assert ("POST", "/api/folders") not in GrafanaStandIn.calls
    assert "folder slmfleet: exists" in second.stdout


def test_rejected_token_is_one_line_and_non_zero(grafana):
    proc = push(grafana, "wrong")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "rejected the token" in proc.stderr


def test_unreachable_grafana_is_one_line_and_non_zero():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = push(f"http://127.0.0.1:{port}", "t")
    assert proc.returncode == 1
    assert proc.stderr.startswith("fleet: cannot reach Grafana") and "Traceback" not in proc.stderr


def test_targets_file_is_rewritten_whole_as_phones_join_and_leave(tmp_path):
    from fleet.observe.prometheus import TargetsFile

    sd = TargetsFile(tmp_path / "prometheus" / "targets.json")
    assert json.loads(sd.path.read_text()) == []
    sd.set("coordinator", "127.0.0.1:9000", job="coordinator")
    sd.set("phone-a", "127.0.0.1:9001", job="phone-agent", phone="phone-a")
    groups = json.loads(sd.path.read_text())
    assert {
        "targets": ["127.0.0.1:9001"],
        "labels": {"job": "phone-agent", "phone": "phone-a"},
    } in groups
    sd.remove("phone-a")
    assert [g["labels"]["job"] for g in json.loads(sd.path.read_text())] == ["coordinator"]
    assert not list(sd.path.parent.glob("*.tmp"))  # written aside, then renamed into place


def test_a_missing_prometheus_binary_is_one_clear_error(tmp_path):
    from fleet.observe.prometheus import EmbeddedPrometheus, PrometheusError, TargetsFile

    sd = TargetsFile(tmp_path / "targets.json")
    prom = EmbeddedPrometheus(tmp_path / "p", sd.path, binary=None)
    prom.binary = None  # as on a machine without the Debian package
    with pytest.raises(PrometheusError, match="no 'prometheus' binary"):
        prom.start()
    broken = EmbeddedPrometheus(tmp_path / "q", sd.path, binary="/bin/false")
    with pytest.raises(PrometheusError, match="exited with code 1"):
        broken.start(timeout_s=10)


def test_a_new_deployment_drops_the_gauges_of_the_last_one():
    from fleet.records import AppDeployment, AppWorkload, DeployResult, ResourceSample

    metrics = AgentMetrics(PhoneProfile("p", memory_budget_bytes=2**30))
    apps = (AppWorkload("kb", slo_ttft_s=0.1), AppWorkload("chat"))
    result = DeployResult(
        (AppDeployment("kb", 1, 1.0, 100, 10), AppDeployment("chat", 2, 1.0, 100, 10)),
        "random weights",
        220,
        2**30,
    )
    metrics.deployed("per_app", "tiny", result, apps, phase="corun")
    metrics.observe_tick(
        [ResourceSample(1, "kb", 1, 500, 400), ResourceSample(1, "chat", 2, 500, 400)]
    )
    get = metrics.registry.get_sample_value
    pss = {"phone": "p", "paradigm": "per_app", "phase": "corun", "model": "tiny"}
    assert get("slmfleet_process_pss_bytes", {**pss, "component": "chat"}) == 400
    assert get("slmfleet_memory_bytes", {**pss, "component": "weights"}) == 200
    metrics.observe_tick([ResourceSample(2, "kb", 1, 500, 400)])  # chat's model was killed
    assert get("slmfleet_process_pss_bytes", {**pss, "component": "chat"}) is None
    assert get("slmfleet_memory_bytes", {**pss, "component": "weights"}) == 100
    # only apps with an SLO get an SLO-miss series
    assert get("slmfleet_slo_misses_total", {**pss, "app": "kb"}) == 0
    assert get("slmfleet_slo_misses_total", {**pss, "app": "chat"}) is None
    service = DeployResult(
        (AppDeployment("service", 3, 1.0, 100, 0),), "random weights", 120, 2**30
    )
    metrics.deployed("slmaas", "tiny", service, apps, phase="corun")
    assert get("slmfleet_process_pss_bytes", {**pss, "component": "kb"}) is None
    assert get("slmfleet_memory_bytes", {**pss, "component": "weights"}) is None
    # counters keep their history across deployments
    assert get("slmfleet_requests_total", {**pss, "app": "kb", "status": "ok"}) == 0
