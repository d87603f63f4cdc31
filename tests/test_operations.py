"""Operations, without the stand: the systemd notification protocol, the metrics catalogue against its docs, the
HTTP endpoints, and the deployment files (systemd unit, Dockerfile, ECS task, IAM policy, alert rules, Grafana
dashboard) checked for what operators rely on. Tools that are not always installed (`promtool`,
`systemd-analyze`) are used when present; the structural checks run everywhere."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from fnmatch import fnmatch
from importlib.metadata import entry_points
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.config import DaemonConfig, load_config
from daemon.http_server import HttpServer
from daemon.observability import METRICS, Metrics
from daemon.sdnotify import SystemdNotifier, socket_address, watchdog_interval
from daemon.sources.stream_reader import _last_valid_event_id

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "graph-replicator.service"
RULES = DEPLOY / "prometheus" / "graph-replicator.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "graph-replicator.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "graph-replicator.json"
TASK_DEFINITION = DEPLOY / "ecs" / "task-definition.json"
IAM_POLICY = DEPLOY / "iam" / "graph-replicator-policy.json"
DRAIN_GRACE_DEFAULT = DaemonConfig.model_fields["drain_grace_seconds"].default
PROMTOOL = shutil.which("promtool")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


# ------------------------------------------------------------------------------------------ sd_notify


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket; records (time, sender pid, fields)."""

    def __init__(self, directory: Path, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"graph-replicator-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.env_value = "@" + name
        else:
            path = directory / "notify.sock"
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, int, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        """Record each datagram as it arrives (a thread, so arrival times are real even while a test blocks)."""
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except (TimeoutError, OSError):
                continue
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], sys.byteorder)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), pid, fields))

    def poll(self, seconds: float) -> None:
        """Give datagrams already sent `seconds` to be received."""
        time.sleep(seconds)

    def with_field(self, key: str) -> list[tuple[float, int, dict[str, str]]]:
        return [m for m in list(self.messages) if key in m[2]]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    sock = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield sock
    sock.close()


def test_socket_addresses_and_watchdog_interval() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"
    assert socket_address("") is None and socket_address("relative") is None and socket_address("@") is None
    assert socket_address("vsock:2:1234") is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_notifier_sends_each_message_and_unsets_the_environment(listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "4000000", "OTHER": "kept"}
    notifier = SystemdNotifier(env)
    assert env == {"OTHER": "kept"}, "children (the embedded engine) must not inherit the notify socket"
    assert notifier.enabled and notifier.watchdog_interval == 2.0
    assert notifier.ready("starting\nup")
    assert notifier.watchdog()
    assert notifier.status("ready | main: polling")
    assert not notifier.status("ready | main: polling"), "an unchanged status is not sent again"
    assert notifier.stopping("draining", extend_timeout_seconds=30)
    listener.poll(0.2)
    notifier.close()
    fields = [m[2] for m in listener.messages]
    assert fields == [
        {"READY": "1", "STATUS": "starting up"},
        {"WATCHDOG": "1"},
        {"STATUS": "ready | main: polling"},
        {"STOPPING": "1", "EXTEND_TIMEOUT_USEC": "30000000", "STATUS": "draining"},
    ]
    assert {m[1] for m in listener.messages} == {os.getpid()}


def test_notifier_without_systemd_is_a_no_op_and_a_missing_listener_never_raises(tmp_path: Path) -> None:
    quiet = SystemdNotifier({})
    assert not quiet.enabled and quiet.watchdog_interval is None
    assert not quiet.ready() and not quiet.watchdog() and not quiet.stopping()
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "1000"})
    assert gone.enabled
    assert not gone.ready() and not gone.watchdog()


async def test_watchdog_pings_from_the_event_loop_and_stops_while_the_loop_is_blocked(
    listener: NotifyListener,
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval == 0.05
    lags: list[float] = []
    task = asyncio.create_task(notifier.run_watchdog(lambda: "fine", on_lag=lags.append))
    await asyncio.sleep(0.4)
    blocked_at = time.monotonic()
    time.sleep(0.5)  # noqa: ASYNC251 - a blocking call on the loop: no pings can go out meanwhile
    unblocked_at = time.monotonic()
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    listener.poll(0.2)
    pings = [t for t, _, f in listener.with_field("WATCHDOG")]
    assert len(pings) >= 8, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 0.45, "the blocked loop should have left a gap in the pings"
    assert sorted(gaps)[len(gaps) // 2] < 0.15, "pings should come every ~50 ms while the loop turns"
    assert not [t for t in pings if blocked_at + 0.05 < t < unblocked_at - 0.05]
    assert max(lags) >= 0.4 and min(lags) < 0.05
    assert listener.with_field("STATUS")[0][2]["STATUS"] == "fine"


# ------------------------------------------------------------------------------------------ metrics


def exposed_names(registry: CollectorRegistry) -> dict[str, str]:
    """Metric name as scraped (counters with _total, info with _info) -> type."""
    names = {}
    for family in registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names[family.name + suffix] = family.type
    return names


def documented_metrics() -> dict[str, tuple[str, str]]:
    """name -> (type, labels) from the catalogue tables in docs/metrics.md."""
    found = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`[a-z_]+`", cells[0]):
            found[cells[0].strip("`")] = (cells[1], cells[2])
    return found


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    registry = Metrics().registry
    exposed, documented = exposed_names(registry), documented_metrics()
    assert set(exposed) == set(documented), {
        "undocumented": sorted(set(exposed) - set(documented)),
        "documented but absent": sorted(set(documented) - set(exposed)),
    }
    labels = {f.name: set() for f in registry.collect()}
    for name, kind in exposed.items():
        assert documented[name][0] == kind, f"{name}: docs say {documented[name][0]}, registry has {kind}"
    for attribute, metric in vars(METRICS).items():
        if hasattr(metric, "_labelnames") and metric._name in labels:
            doc_labels = {x.strip() for x in documented[_exposed(metric)][1].split(",")} - {"-"}
            if metric._type != "info":
                assert set(metric._labelnames) == doc_labels, (attribute, metric._labelnames, doc_labels)


def _exposed(metric: object) -> str:
    name, kind = metric._name, metric._type  # type: ignore[attr-defined]
    return name + {"counter": "_total", "info": "_info"}.get(kind, "")


def test_metric_names_follow_the_conventions() -> None:
    for name, kind in exposed_names(Metrics().registry).items():
        if not name.startswith("graph_replicator_"):
            continue
        assert re.fullmatch(r"graph_replicator_[a-z0-9_]+", name), name
        assert (kind == "counter") == name.endswith("_total"), name
        if "latency" in name or "duration" in name:
            assert name.endswith("_seconds"), name


def test_commits_behind_head_follows_the_checkpoint_at_scrape_time() -> None:
    metrics = Metrics()
    metrics.note_stream_head("main", 120)
    metrics.note_stream_head("main", 100)  # an older report never moves the head back
    sample = lambda name: metrics.registry.get_sample_value(name, {"source": "main"})  # noqa: E731
    assert sample("graph_replicator_stream_head_commit_number") == 120
    assert sample("graph_replicator_commits_behind_head") == 120  # nothing checkpointed yet
    metrics.checkpoint_commit.labels(source="main", partition="").set(90)
    assert sample("graph_replicator_commits_behind_head") == 30
    metrics.checkpoint_commit.labels(source="main", partition="").set(120)
    assert sample("graph_replicator_commits_behind_head") == 0
    metrics.note_stream_head("main", 125)
    assert sample("graph_replicator_commits_behind_head") == 5


def test_the_head_is_read_from_a_from_the_future_message() -> None:
    message = (
        "An error occurred (StreamRecordsNotFoundException) when calling the GetPropertygraphStream operation: "
        "Requested startEventId is from the future. Last valid eventId is [commitNum = 4711, opNum = 3]"
    )
    assert _last_valid_event_id(message) == (4711, 3)
    assert _last_valid_event_id("Last valid eventId is [commitNum = 0, opNum = 0]") is None
    assert _last_valid_event_id("something else") is None


async def test_http_endpoints_and_openmetrics_negotiation() -> None:
    metrics = Metrics()
    metrics.records_read.labels(source="main").inc(7)
    state = {"ready": True}
    server = HttpServer(
        "127.0.0.1:0",
        lambda: (state["ready"], [] if state["ready"] else ["draining"]),
        lambda: {"ready": state["ready"]},
        metrics.registry,
    )
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/metrics") as response:
                text = await response.text()
                assert response.status == 200 and response.content_type == "text/plain"
                assert 'graph_replicator_records_read_total{source="main"} 7.0' in text
                assert "process_cpu_seconds_total" in text and "python_info" in text
            accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            async with http.get(base + "/metrics", headers={"Accept": accept}) as response:
                text = await response.text()
                assert response.content_type == "application/openmetrics-text"
                assert text.endswith("# EOF\n")
                assert 'graph_replicator_records_read_total{source="main"} 7.0' in text
            async with http.get(base + "/healthz") as response:
                body = await response.json()
                assert response.status == 200 and body["status"] == "alive"
            async with http.get(base + "/readyz") as response:
                assert response.status == 200
            state["ready"] = False
            async with http.get(base + "/readyz") as response:
                assert response.status == 503 and (await response.json())["reasons"] == ["draining"]
    finally:
        await server.stop()


def test_promtool_accepts_the_scrape_format() -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    metrics = Metrics()
    metrics.records_read.labels(source="main").inc()
    metrics.batch_duration.labels(sink="replica").observe(0.1)
    from prometheus_client import generate_latest

    run = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=generate_latest(metrics.registry), capture_output=True, timeout=30
    )
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()


# ------------------------------------------------------------------------------------------ alert rules


def catalogue_series() -> set[str]:
    """Every series name a scrape can hold (histogram parts included), plus Prometheus's own `up`."""
    names = {"up"}
    for name, kind in exposed_names(Metrics().registry).items():
        names.add(name)
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "changes", "time", "histogram_quantile",
    "label_values", "le", "job", "instance", "source", "sink", "reason", "stage", "state", "error_type",
    "partition", "humanize", "humanizeDuration", "value", "labels",
}  # fmt: skip


def metric_names_in(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (not functions, keywords or label names)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhd]?", w)}


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_use_only_catalogued_metrics_and_cover_the_required_conditions() -> None:
    rules = alert_rules()
    catalogue = catalogue_series()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        used = metric_names_in(rule["expr"])
        assert used and used <= catalogue, (rule["alert"], used - catalogue)
    by_metric = {name: rule["alert"] for rule in rules for name in metric_names_in(rule["expr"])}
    # the four: latency over threshold, no progress, dead letters > 0, not ready
    for metric in (
        "graph_replicator_stream_latency_seconds",
        "graph_replicator_last_checkpoint_timestamp_seconds",
        "graph_replicator_records_dead_lettered_total",
        "graph_replicator_ready",
        "graph_replicator_stream_expired",
        "graph_replicator_lease_unowned_seconds",  # a partition owned by nobody for longer than the lease
    ):
        assert metric in by_metric, f"no alert on {metric}"


def test_every_alert_has_a_runbook_section_in_operations_md() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", operations, flags=re.M)}
    for rule in alert_rules():
        link = rule["annotations"]["runbook_url"]
        assert link.startswith("docs/operations.md#"), link
        assert link.split("#", 1)[1] in anchors, f"{rule['alert']}: no heading for {link}"
        assert rule["alert"] in operations


def _anchor(heading: str) -> str:
    """GitHub's heading anchor."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`)")
def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)
        assert run.returncode == 0, run.stdout + run.stderr
    config = DEPLOY / "prometheus" / "prometheus.example.yml"
    run = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------------------------------------ grafana


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_panels_query_the_catalogue() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    catalogue = catalogue_series()
    used: set[str] = set()
    for expr in dashboard_queries():
        names = metric_names_in(expr.replace("$__rate_interval", "5m"))
        assert names <= catalogue, (expr, names - catalogue)
        used |= names
    for must in (
        "graph_replicator_stream_latency_seconds",
        "graph_replicator_end_to_end_latency_seconds_bucket",
        "graph_replicator_records_applied_total",
        "graph_replicator_retries_total",
        "graph_replicator_queue_depth",
        "graph_replicator_records_dead_lettered_total",
        "graph_replicator_leases_held",
        "graph_replicator_lease_acquisitions_total",
        "graph_replicator_lease_losses_total",
        "graph_replicator_lease_steals_total",
        "graph_replicator_lease_partitions",
        "graph_replicator_lease_unowned_seconds",
    ):
        assert must in used, f"the dashboard does not show {must}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in dashboard_queries():
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables or var.startswith("__"), var


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`)")
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(dashboard_queries()):
        concrete = expr.replace("$__rate_interval", "5m")
        concrete = re.sub(r"\$\w+", ".*", concrete)
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------------------------------------ systemd


def unit_entries(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; repeated keys stay separate, as systemd reads them."""
    entries, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_value(key: str, section: str = "Service") -> str:
    values = [v for s, k, v in unit_entries() if s == section and k == key]
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_systemd_unit_has_what_operators_rely_on() -> None:
    assert unit_value("Type") == "notify"
    assert unit_value("NotifyAccess") == "main"
    assert 5 <= seconds(unit_value("WatchdogSec")) <= 300
    assert unit_value("Restart") == "on-failure"
    assert unit_value("KillSignal") == "SIGTERM"
    assert unit_value("KillMode") == "mixed", "the embedded engine must outlive the drain"
    assert seconds(unit_value("TimeoutStopSec")) > DRAIN_GRACE_DEFAULT + 10
    assert unit_value("User") == unit_value("Group") == "graph-replicator"
    assert unit_value("StateDirectory") == "graph-replicator"
    assert "2" in unit_value("RestartPreventExitStatus").split(), "a config error must not restart forever"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit_value(key) == value, key
    exec_start = shlex.split(unit_value("ExecStart"))
    assert exec_start[1:3] == ["run", "--config"] and "--exit-when-idle" not in exec_start
    data_dir = [v for s, k, v in unit_entries() if k == "Environment" and "DATA_DIR" in v]
    assert data_dir == ["GRAPH_REPLICATOR__DAEMON__DATA_DIR=/var/lib/graph-replicator"]
    assert unit_value("WorkingDirectory") == "/var/lib/graph-replicator"
    assert unit_value("WantedBy", "Install") == "multi-user.target"


def installable_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart/ExecStartPre pointing at this checkout's graph-replicator."""
    text = UNIT.read_text().replace("/opt/graph-replicator/bin/graph-replicator", _venv_command())
    path = tmp_path / "graph-replicator.service"
    path.write_text(text)
    return path


def _venv_command() -> str:
    command = Path(sys.executable).parent / "graph-replicator"
    assert command.exists(), f"{command} is missing: install the project (pip install -e .)"
    return str(command)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    unit = installable_unit(tmp_path)
    run = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too, printing a warning: any output is a failure here
    assert run.returncode == 0 and not run.stderr.strip() and not run.stdout.strip(), run.stdout + run.stderr
    run = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", run.stdout + run.stderr)
    assert match, run.stdout + run.stderr
    assert float(match.group(1)) <= 2.0, run.stdout


def test_env_file_example_is_valid_overrides_of_the_example_config() -> None:
    env = {}
    for line in (DEPLOY / "systemd" / "graph-replicator.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert env["GRAPH_REPLICATOR__DAEMON__HTTP_ADDRESS"].endswith(":9464")
    config = load_config(ROOT / "config" / "neptune-to-neptune.toml", environ=env)
    assert config.daemon.drain_grace_seconds < seconds(unit_value("TimeoutStopSec"))


# ------------------------------------------------------------------------------------------ docker


def dockerfile_instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stage, out = "", []
    for line in logical:
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        out.append((stage, instruction, args.strip()))
    return out


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, posix) out of the build context; last match wins."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


def copied_from_context() -> list[tuple[str, str]]:
    """(source, destination) of every COPY/ADD from the build context (not --from another stage)."""
    copies = []
    for _, instruction, args in dockerfile_instructions():
        if instruction in ("COPY", "ADD") and "--from=" not in args:
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            copies += [(source, words[-1]) for source in words[:-1]]
    return copies


def test_dockerfile_is_multi_stage_non_root_and_stops_cleanly() -> None:
    instructions = dockerfile_instructions()
    froms = [args for _, i, args in instructions if i == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    final = instructions[-1][0]
    last = {i: args for stage, i, args in instructions if stage == final}
    assert last["STOPSIGNAL"] == "SIGTERM"
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0", ""), user
    assert "/healthz" in last["HEALTHCHECK"] or "HEALTH_URL" in last["HEALTHCHECK"]
    entrypoint = json.loads(last["ENTRYPOINT"])
    assert entrypoint[0].endswith("tini") and entrypoint[-1] == "graph-replicator"
    cmd = json.loads(last["CMD"])
    assert cmd[:2] == ["run", "--config"]
    env = " ".join(args for _, i, args in instructions if i == "ENV")
    assert "GRAPH_REPLICATOR__DAEMON__HTTP_ADDRESS=0.0.0.0:9464" in env
    assert "GRAPH_REPLICATOR_HEALTH_URL=http://127.0.0.1:9464/healthz" in env
    assert last["EXPOSE"] == "9464"
    assert "/var/lib/graph-replicator" in last["VOLUME"]


def test_dockerfile_copies_exist_and_survive_dockerignore() -> None:
    copies = copied_from_context()
    assert copies, "the Dockerfile copies nothing from the context"
    for source, _ in copies:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: missing"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        kept = [p for p in files if not dockerignored(p.relative_to(ROOT).as_posix())]
        assert kept, f"COPY {source}: .dockerignore excludes all of it"
    assert dockerignored("daemon/__pycache__/cli.cpython-311.pyc")
    assert dockerignored(".venv/bin/python") and dockerignored("tests/test_operations.py")
    assert not dockerignored("daemon/aws_models/neptunedata/2023-08-01/service-2.sdk-extras.json")


def test_the_dockerfile_build_context_builds_the_wheel_with_the_entry_point(tmp_path: Path) -> None:
    """Lay out exactly what the build stage copies (minus .dockerignore), and build the wheel from it as the
    build stage's `pip wheel .` does (here without dependencies and build isolation: no network)."""
    context = tmp_path / "context"
    for source, destination in copied_from_context():
        path = ROOT / source
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if dockerignored(relative):
                continue
            target = context / relative  # WORKDIR /src; destinations mirror the sources
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        assert destination in ("./", f"./{source}", source), destination
    wheels = tmp_path / "wheels"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (wheel,) = wheels.glob("graph_replicator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry).decode()
    assert "daemon/cli.py" in names and "daemon/sdnotify.py" in names
    assert "daemon/aws_models/neptunedata/2023-08-01/service-2.sdk-extras.json" in names
    # the status page and graph view, with the vendored drawing library and its licence (daemon.webui)
    assert {f"daemon/static/{f}" for f in ("index.html", "graph.html", "status.js", "graph.js", "style.css")} <= names
    assert {"daemon/static/vendor/cytoscape.min.js", "daemon/static/vendor/cytoscape.LICENSE"} <= names
    assert re.search(r"^graph-replicator\s*=\s*daemon\.cli:main$", scripts, flags=re.M), scripts
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["graph-replicator"] == "daemon.cli:main"
    (installed,) = [e for e in entry_points(group="console_scripts") if e.name == "graph-replicator"]
    from daemon.cli import main

    assert installed.load() is main


async def test_the_healthcheck_command_passes_on_a_live_daemon_and_fails_without_one() -> None:
    healthcheck = next(args for _, i, args in dockerfile_instructions() if i == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    server = HttpServer("127.0.0.1:0", lambda: (False, ["draining"]), dict, Metrics().registry)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        env = {**os.environ, "GRAPH_REPLICATOR_HEALTH_URL": url}
        proc = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, "liveness must pass even while not ready"
    finally:
        await server.stop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env, stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(proc.wait(), 30) != 0


# ------------------------------------------------------------------------------------------ ECS and IAM


def test_ecs_task_definition_matches_the_image_and_the_drain() -> None:
    task = json.loads(TASK_DEFINITION.read_text())
    assert task["taskRoleArn"] and task["executionRoleArn"]
    (container,) = task["containerDefinitions"]
    assert container["stopTimeout"] > DRAIN_GRACE_DEFAULT + 10
    assert container["user"].split(":")[0] not in ("0", "root")
    assert [p["containerPort"] for p in container["portMappings"]] == [9464]
    assert "/healthz" in " ".join(container["healthCheck"]["command"])
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    (mount,) = container["mountPoints"]
    assert mount["containerPath"] == "/var/lib/graph-replicator"
    assert mount["sourceVolume"] in {v["name"] for v in task["volumes"]}
    env = {e["name"]: e["value"] for e in container["environment"]}
    config = load_config(ROOT / "config" / "neptune-to-neptune.toml", environ=env)
    assert config.daemon.drain_grace_seconds < container["stopTimeout"]
    service = json.loads((DEPLOY / "ecs" / "service.json").read_text())
    # never two replicators on one checkpoint: the old task drains before the new one starts
    assert service["desiredCount"] == 1 and service["deploymentConfiguration"]["maximumPercent"] == 100


def test_iam_policy_grants_the_data_actions_the_daemon_uses() -> None:
    policy = json.loads(IAM_POLICY.read_text())
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {
        "neptune-db:GetStreamRecords",
        "neptune-db:ReadDataViaQuery",
        "neptune-db:WriteDataViaQuery",
        "neptune-db:DeleteDataViaQuery",
        "neptune-graph:ReadDataViaQuery",
        "neptune-graph:WriteDataViaQuery",
        "neptune-graph:DeleteDataViaQuery",
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "dynamodb:DescribeTable",
        "dynamodb:BatchGetItem",
    } <= actions
    assert not [a for a in actions if a.endswith(":*") or a == "*"], "no wildcard actions"
    bootstrap = json.loads((DEPLOY / "iam" / "graph-replicator-bootstrap-policy.json").read_text())
    bootstrap_actions = {
        a for s in bootstrap["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {"neptune-db:StartLoaderJob", "neptune-db:GetLoaderJobStatus", "s3:PutObject"} <= bootstrap_actions
    operations = (ROOT / "docs" / "operations.md").read_text()
    for action in actions | bootstrap_actions:
        assert action in operations, f"docs/operations.md does not explain {action}"
        assert not action.endswith(":*"), action


# ------------------------------------------------------------------------------------------ status command


async def test_status_command_prints_a_readable_table(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.cli import main

    document = {
        "ready": False,
        "reasons": ["draining"],
        "draining": True,
        "uptime_seconds": 3725.2,
        "dead_letters": 2,
        "sources": [
            {
                "source": "main",
                "state": "caught_up",
                "position": [4711, 3],
                "caught_up": True,
                "lag_seconds": 0.0,
                "changes_applied": 1234567,
                "sink": "replica",
                "sink_healthy": True,
                "error": None,
            },
            {
                "source": "orders",
                "state": "expired",
                "position": {"shardId-0001": ["49590338271490256608559692538361571095921575989136588898"]},
                "caught_up": False,
                "lag_seconds": 93784.0,
                "changes_applied": 0,
                "sink": "replica",
                "sink_healthy": False,
                "error": "the stream no longer holds the changes after ...",
            },
        ],
    }
    server = HttpServer("127.0.0.1:0", lambda: (False, ["draining"]), lambda: document, Metrics().registry)
    await server.start()
    try:
        code = await asyncio.to_thread(main, ["status", "--url", f"http://127.0.0.1:{server.port}"])
    finally:
        await server.stop()
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "ready: NO  (draining)"
    assert lines[1] == "uptime: 1h 02m   dead letters: 2"
    header, main_row, orders_row = lines[2], lines[3], lines[4]
    assert header.split() == ["source", "state", "position", "caught", "up", "lag", "applied", "sink", "sink", "ok"]
    assert main_row.split() == ["main", "caught_up", "4711/3", "yes", "caught", "up", "1,234,567", "replica", "yes"]
    assert orders_row.split() == ["orders", "expired", "1", "shards", "no", "1d", "2h", "0", "replica", "NO"]
    assert header.index("position") == main_row.index("4711/3"), "columns line up"
    assert "  shardId-0001  49590338271490256608559692538361571095921575989136588898" in out
    assert "orders: the stream no longer holds the changes" in out
    code = await asyncio.to_thread(main, ["status", "--url", f"http://127.0.0.1:{server.port}"])
    assert code == 1 and "cannot read" in capsys.readouterr().err


async def test_status_command_prints_the_owner_of_each_partition(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.cli import main

    me, other = "host-a:41:0a1b2c3d", "host-b:7:9f8e7d6c"

    def lease(partition: str, owner: str | None, position: list | None, pending: str | None = None) -> dict:
        return {
            "partition": partition,
            "owner": owner,
            "held_by_me": owner == me,
            "position": position,
            "pending_owner": pending,
        }

    entry = {
        "state": "polling",
        "caught_up": False,
        "lag_seconds": 1.0,
        "changes_applied": 10,
        "sink": "replica",
        "sink_healthy": True,
        "error": None,
        "owner_id": me,
    }
    document = {
        "ready": True,
        "reasons": [],
        "draining": False,
        "uptime_seconds": 12.0,
        "dead_letters": 0,
        "sources": [
            {**entry, "source": "main", "position": [4711, 3], "leases": [lease("", other, [4711, 3])]},
            {
                **entry,
                "source": "orders",
                "position": {"shardId-1": ["0042"], "shardId-2": ["0099"]},
                "leases": [
                    lease("shardId-0", None, ["SHARD_END"]),
                    lease("shardId-1", me, ["0042"], pending=other),
                    lease("shardId-2", other, ["0099"]),
                    lease("shardId-3", None, None),
                ],
            },
            {**entry, "source": "local", "position": [1, 1], "owner_id": None},  # SQLite: no leases
        ],
    }
    server = HttpServer("127.0.0.1:0", lambda: (True, []), lambda: document, Metrics().registry)
    await server.start()
    try:
        code = await asyncio.to_thread(main, ["status", "--url", f"http://127.0.0.1:{server.port}"])
    finally:
        await server.stop()
    assert code == 0
    out = capsys.readouterr().out
    assert f"main leases (this instance is {me}):\n  (stream)  {other}  4711/3\n" in out
    orders = out.split(f"orders leases (this instance is {me}):\n", 1)[1].splitlines()[:4]
    assert [line.split() for line in orders] == [
        ["shardId-1", "me", "0042", "asked", "for", "by", other],
        ["shardId-2", other, "0099"],
        ["shardId-3", "-", "-"],
        ["(1", "finished", "shards)"],
    ]
    assert orders[0].index("me") == orders[1].index(other), "columns line up"
    assert "local leases" not in out


# ------------------------------------------------------------------------------------------ shared state (DynamoDB)

FARGATE = DEPLOY / "ecs" / "fargate"
LEASE_TABLE_TEMPLATE = DEPLOY / "cloudformation" / "lease-table.yaml"
STORE_SOURCE = ROOT / "daemon" / "checkpoint_dynamodb.py"


def lease_table_actions() -> set[str]:
    """Every DynamoDB API the checkpoint store calls, read from its code: the operations passed to `_call` and
    the ones its waiters poll, as IAM action names."""
    import ast

    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    operations = {xform_name(op): op for op in session.get_service_model("dynamodb").operation_names}
    waiters = session.get_waiter_model("dynamodb")
    waiter_names = {xform_name(name): name for name in waiters.waiter_names}
    actions = set()
    for node in ast.walk(ast.parse(STORE_SOURCE.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        if node.func.attr == "_call":
            actions.add(operations[first.value])
        elif node.func.attr == "get_waiter":
            actions.add(waiters.get_waiter(waiter_names[first.value]).operation)
    return {"dynamodb:" + action for action in actions}


def statement_actions(policy: dict, resource: str) -> set[str]:
    """The actions a policy allows on `resource` (ARN patterns with * matched)."""
    allowed = set()
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] == "Allow" and any(fnmatch(resource, pattern) for pattern in resources):
            action = statement["Action"]
            allowed |= {action} if isinstance(action, str) else set(action)
    return allowed


def lease_table_resource() -> dict:
    template = yaml.safe_load(LEASE_TABLE_TEMPLATE.read_text())  # plain YAML: no !Ref short forms
    (table,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    table["name"] = template["Parameters"]["TableName"]["Default"]
    return table


def test_the_iam_policy_allows_every_call_the_lease_table_store_makes() -> None:
    needed = lease_table_actions()
    assert {"dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:DescribeTable", "dynamodb:CreateTable"} <= needed
    arn = f"arn:aws:dynamodb:us-east-1:111122223333:table/{lease_table_resource()['name']}"
    granted = statement_actions(json.loads(IAM_POLICY.read_text()), arn)
    assert needed <= granted, f"the policy lacks {sorted(needed - granted)} on {arn}"
    extra = granted - needed - {"dynamodb:ListStreams"}  # (that one is granted on "*": it takes no resource)
    assert not extra, f"more than the store uses: {sorted(extra)}"


async def test_the_lease_table_template_has_the_key_schema_the_store_creates() -> None:
    from botocore.exceptions import ClientError

    from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore

    class Recorder:
        """Answers DescribeTable with "not found" and records the CreateTable request."""

        def __init__(self) -> None:
            self.created: dict = {}

        async def describe_table(self, **kwargs: object) -> dict:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "no"}}, "DescribeTable")

        async def create_table(self, **kwargs: object) -> dict:
            self.created = kwargs
            return {}

        def get_waiter(self, name: str) -> object:
            class Waiter:
                async def wait(self, **kwargs: object) -> None:
                    return None

            return Waiter()

    recorder = Recorder()
    await DynamoDBCheckpointStore(recorder, "t").ensure_table()
    table = lease_table_resource()["Properties"]
    assert table["KeySchema"] == recorder.created["KeySchema"]
    assert table["AttributeDefinitions"] == recorder.created["AttributeDefinitions"]
    assert table["BillingMode"] == recorder.created["BillingMode"] == "PAY_PER_REQUEST"


def test_the_fargate_example_runs_several_tasks_with_their_state_in_dynamodb() -> None:
    task = json.loads((FARGATE / "task-definition.json").read_text())
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    for volume in task.get("volumes", []):  # scratch space only: nothing outlives the task
        assert set(volume) == {"name"}, f"{volume['name']}: a persistent volume; the state belongs in DynamoDB"
    (container,) = task["containerDefinitions"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    config = load_config(ROOT / "config" / "neptune-to-neptune.toml", environ=env)
    assert config.checkpoint.kind == "dynamodb"
    assert config.checkpoint.table == lease_table_resource()["name"]
    assert f"table/{config.checkpoint.table}" in IAM_POLICY.read_text()
    assert config.checkpoint.endpoint is None, "the real DynamoDB, not a stand-in"
    # ECS sends SIGTERM and kills after stopTimeout (Fargate allows 120 s): the drain, the lease release and the
    # close must fit, or the standby waits for the lease to expire instead of taking the hand-off.
    assert config.daemon.drain_grace_seconds + 10 <= container["stopTimeout"] <= 120
    service = json.loads((FARGATE / "service.json").read_text())
    assert service["launchType"] == "FARGATE" and service["desiredCount"] >= 2
    deployment = service["deploymentConfiguration"]
    keep = -(-service["desiredCount"] * deployment["minimumHealthyPercent"] // 100)  # ECS rounds up
    most = service["desiredCount"] * deployment["maximumPercent"] // 100  # and this down
    assert keep >= 1, "a rolling update keeps an instance running (minimumHealthyPercent > 0)"
    assert keep < service["desiredCount"] or most > service["desiredCount"], "the update could never start"
    assert len(service["networkConfiguration"]["awsvpcConfiguration"]["subnets"]) >= 2, "spread over zones"
