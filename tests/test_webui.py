"""The status page and the graph view (daemon.webui): their JSON endpoints against a real supervisor running in
this process (the shipped social sample into the embedded FalkorDB engine, and a file of hostile names and values
into that engine and, as Neptune and as Neptune Analytics, into the Neptune-compatible stand), and both pages in a
real headless Chromium (Debian's `chromium`, driven by Playwright), which must have drawn the daemon's data."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from daemon.config import DaemonConfig
from daemon.http_server import HttpServer
from daemon.observability import METRICS
from daemon.webui import LagHistory
from tests.stand.daemon_process import AWS_ENV, toml_value
from tests.stand.harness import wait_for
from tests.stand.live_daemon import LiveDaemon
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import ReferenceGraph

SAMPLE = Path(__file__).parents[1] / "config" / "samples" / "social-history.jsonl.gz"
HOSTILE_ID = "x<1>&'\""
HOSTILE_LABEL = "<b>Tag</b>"
HOSTILE_BIO = '<img src=x onerror="document.body.dataset.pwned=1">'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def hostile_records() -> list[dict[str, Any]]:
    """Three vertices and two edges whose names, ids and values are HTML and quotes."""

    def op(n: int, data: dict[str, Any]) -> dict[str, Any]:
        return {"commitTimestamp": 1_700_000_000_000, "eventId": {"commitNum": 1, "opNum": n}, "op": "ADD",
                "data": data}  # fmt: skip

    def s(value: str) -> dict[str, str]:
        return {"value": value, "dataType": "String"}

    data = [
        {"id": HOSTILE_ID, "type": "vl", "key": "label", "value": s(HOSTILE_LABEL)},
        {"id": HOSTILE_ID, "type": "vp", "key": "bio", "value": s(HOSTILE_BIO)},
        {"id": HOSTILE_ID, "type": "vp", "key": "`key`%", "value": s("</script><script>alert(1)</script>")},
        {"id": "y", "type": "vl", "key": "label", "value": s("Plain")},
        {"id": "z", "type": "vl", "key": "label", "value": s("Plain")},
        {"id": "e-xy", "type": "e", "key": "label", "value": s("<i>LINKS</i>"), "from": HOSTILE_ID, "to": "y"},
        {"id": "e-zx", "type": "e", "key": "label", "value": s("POINTS`AT"), "from": "z", "to": HOSTILE_ID},
        {"id": "e-zx", "type": "ep", "key": "note", "value": s("&amp; <br>")},
    ]
    records = [op(n, d) for n, d in enumerate(data, start=1)]
    records[-1]["isLastOp"] = True
    return records


def write_config(work: Path, stand: NeptuneStand, hostile: Path) -> Path:
    sources = [
        {"name": "sample", "kind": "file", "sink": "local", "path": str(SAMPLE), "follow": True},
        {"name": "hostile", "kind": "file", "sink": "local", "path": str(hostile), "follow": True},
        {"name": "mirror", "kind": "file", "sink": "neptune", "path": str(hostile), "follow": True},
        {"name": "analytics", "kind": "file", "sink": "analytics", "path": str(hostile), "follow": True},
    ]
    sinks = {
        "local": {"kind": "falkordb", "graph": "social"},
        "neptune": {"kind": "neptune", "endpoint": stand.url, "region": "us-east-1"},
        # the stand's one graph again, through Neptune Analytics' ExecuteQuery (the same elements, idempotently)
        "analytics": {"kind": "neptune-analytics", "endpoint": stand.url, "region": "us-east-1", "graph_id": "g-1"},
    }
    lines = ["[daemon]", f"data_dir = {toml_value(str(work / 'data'))}", 'http_address = "127.0.0.1:0"']
    lines.append('log_format = "json"')
    for source in sources:
        lines += ["", "[[sources]]", *(f"{k} = {toml_value(v)}" for k, v in source.items())]
        lines.append("poll_interval_seconds = 0.2")
    for name, sink in sinks.items():
        lines += ["", f"[sinks.{name}]", *(f"{k} = {toml_value(v)}" for k, v in sink.items())]
    path = work / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def daemon(stand_session: NeptuneStand, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    stand_session.reset()
    work = tmp_path_factory.mktemp("webui")
    hostile = work / "hostile.jsonl"
    hostile.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in hostile_records()))
    with pytest.MonkeyPatch.context() as env:
        for key, value in AWS_ENV.items():
            env.setenv(key, value)
        live = LiveDaemon(write_config(work, stand_session, hostile), history_interval=0.2).start()
        try:
            live.wait_caught_up(60)
            yield live
        finally:
            live.stop()


@pytest.fixture(scope="module")
def reference() -> ReferenceGraph:
    graph = ReferenceGraph()
    for line in gzip.decompress(SAMPLE.read_bytes()).splitlines():
        graph.apply(orjson.loads(line))
    return graph


def graph_data(daemon: LiveDaemon, **params: Any) -> tuple[int, dict[str, Any]]:
    return daemon.get_json("/graph/data?" + urllib.parse.urlencode(params))


# ----------------------------------------------------------------------------------------------------
# JSON endpoints
# ----------------------------------------------------------------------------------------------------


def test_status_names_each_sink_with_its_health_and_retries(daemon: LiveDaemon) -> None:
    code, status = daemon.get_json("/status")
    assert code == 200
    assert [s["source"] for s in status["sources"]] == ["sample", "hostile", "mirror", "analytics"]
    kinds = {s["sink"]: s["kind"] for s in status["sinks"]}
    assert kinds == {"local": "falkordb", "neptune": "neptune", "analytics": "neptune-analytics"}
    for sink in status["sinks"]:
        assert sink["healthy"] is True and sink["failing_reason"] is None
        assert isinstance(sink["retries"], dict)
    # two sources start one embedded engine (sink "local") at once: one engine, no crash and restart
    restarts = {s: METRICS.task_restarts.labels(source=s)._value.get() for s in ("sample", "hostile")}
    assert restarts == {"sample": 0, "hostile": 0}


def test_history_holds_recent_lag_samples_for_every_source(daemon: LiveDaemon) -> None:
    def caught_up_sample() -> dict[str, Any] | None:
        code, history = daemon.get_json("/status/history")
        assert code == 200
        return history if history["sources"]["sample"][-1][3] else None

    history = wait_for(caught_up_sample, 10, "a sample taken after the catch-up")
    assert history["interval_seconds"] == 0.2
    assert set(history["sources"]) == {"sample", "hostile", "mirror", "analytics"}
    samples = history["sources"]["sample"]
    assert len(samples) >= 2
    times = [s[0] for s in samples]
    assert times == sorted(times)
    _, lag, applied, _ = samples[-1]
    assert lag == 0.0  # caught up: no lag
    assert applied == daemon.get_json("/status")[1]["sources"][0]["changes_applied"] > 0


def test_neighbourhood_is_the_replicated_one(daemon: LiveDaemon, reference: ReferenceGraph) -> None:
    code, data = graph_data(daemon, id="person-1")
    assert code == 200, data
    assert data["sink"] == "local" and data["kind"] == "falkordb" and data["sinks"] == ["local", "neptune", "analytics"]
    centre = data["nodes"][0]
    expected = reference.vertices["person-1"]
    assert centre["id"] == "person-1" and centre["hop"] == 0
    assert set(centre["labels"]) == set(expected.labels)
    assert centre["properties"] == expected.props  # the id property and the base label are not shown
    incident = reference.incident_edges("person-1")
    assert not data["truncated"]
    assert {e["id"] for e in data["edges"]} == set(incident)
    for edge in data["edges"]:
        want = reference.edges[edge["id"]]
        assert (edge["type"], edge["source"], edge["target"]) == (want.type, want.from_id, want.to_id)
        assert edge["properties"] == want.props
    neighbours = {e.to_id if e.from_id == "person-1" else e.from_id for e in map(reference.edges.get, incident)}
    assert {n["id"] for n in data["nodes"][1:]} == neighbours - {"person-1"}


def test_limit_and_depth_bound_the_answer(daemon: LiveDaemon) -> None:
    code, two_hops = graph_data(daemon, id="person-1", depth=2, limit=1000)
    assert code == 200
    assert max(n["hop"] for n in two_hops["nodes"]) == 2
    code, one_hop = graph_data(daemon, id="person-1")
    assert len(two_hops["nodes"]) > len(one_hop["nodes"])
    code, limited = graph_data(daemon, id="person-1", depth=2, limit=10)
    assert code == 200
    assert limited["truncated"] is True and len(limited["edges"]) == 10
    assert len(limited["nodes"]) <= 11
    # truncated says that there were more edges, not that there might be
    exactly = len(one_hop["edges"])
    assert graph_data(daemon, id="person-1", limit=exactly)[1]["truncated"] is False
    one_short = graph_data(daemon, id="person-1", limit=exactly - 1)[1]
    assert one_short["truncated"] is True and len(one_short["edges"]) == exactly - 1
    everything = graph_data(daemon, id="person-1", depth=3, limit=1000)[1]
    assert len({(e["source"], e["target"], e["id"]) for e in everything["edges"]}) == len(everything["edges"])


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"id": "nope"}, 404, "no vertex with id 'nope' in sink 'local'"),
        ({"id": "person-1", "sink": "other"}, 404, "no sink named 'other'; sinks: local, neptune, analytics"),
        ({}, 400, "give a vertex id"),
        ({"id": "person-1", "depth": "9"}, 400, "depth must be a whole number from 1 to 3"),
        ({"id": "person-1", "limit": "many"}, 400, "limit must be a whole number from 1 to 1000"),
    ],
)
def test_requests_that_cannot_be_answered_say_why(
    daemon: LiveDaemon, params: dict[str, str], status: int, words: str
) -> None:
    code, answer = graph_data(daemon, **params)
    assert code == status
    assert words in answer["error"]


def test_ids_are_parameters_and_reads_cannot_write(daemon: LiveDaemon) -> None:
    count = "MATCH (n) RETURN count(n) AS n"
    before = daemon.call(daemon.supervisor.sinks["local"].query(count))[0]["n"]
    for injection in ("x'}) DETACH DELETE c //", 'x"}) DETACH DELETE c //', "person-1` DETACH DELETE c //"):
        code, answer = graph_data(daemon, id=injection)
        assert code == 404 and injection in answer["error"]
    assert daemon.call(daemon.supervisor.sinks["local"].query(count))[0]["n"] == before
    with pytest.raises(Exception, match=r"(?i)read.?only"):
        daemon.call(daemon.supervisor.sinks["local"].read("CREATE (n:Intruder) RETURN n"))
    assert daemon.call(daemon.supervisor.sinks["local"].query(count))[0]["n"] == before


def test_hostile_names_and_values_come_back_as_data_from_every_kind_of_sink(daemon: LiveDaemon) -> None:
    answers = {}
    for sink in ("local", "neptune", "analytics"):
        code, data = graph_data(daemon, id=HOSTILE_ID, sink=sink)
        assert code == 200, data
        answers[sink] = data
        centre = data["nodes"][0]
        assert centre["labels"] == [HOSTILE_LABEL]
        assert centre["properties"] == {"bio": HOSTILE_BIO, "`key`%": "</script><script>alert(1)</script>"}
        edges = {e["id"]: e for e in data["edges"]}
        assert edges["e-xy"]["type"] == "<i>LINKS</i>" and edges["e-xy"]["source"] == HOSTILE_ID
        assert edges["e-zx"]["type"] == "POINTS`AT" and edges["e-zx"]["target"] == HOSTILE_ID
        assert edges["e-zx"]["properties"] == {"note": "&amp; <br>"}

    def shape(data: dict[str, Any]) -> Any:
        return (
            sorted(orjson.dumps(n, option=orjson.OPT_SORT_KEYS) for n in data["nodes"]),
            sorted(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in data["edges"]),
        )

    assert answers["neptune"]["kind"] == "neptune" and answers["analytics"]["kind"] == "neptune-analytics"
    assert shape(answers["local"]) == shape(answers["neptune"]) == shape(answers["analytics"])


def test_pages_are_served_with_a_strict_content_policy(daemon: LiveDaemon) -> None:
    for path in ("/", "/graph", "/static/status.js", "/static/vendor/cytoscape.min.js"):
        code, headers, body = daemon.get(path)
        assert code == 200 and body, path
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    code, _, _ = daemon.get("/static/../webui.py")
    assert code in (403, 404)


# ----------------------------------------------------------------------------------------------------
# Without a daemon (before the browser tests: Playwright's sync API keeps an event loop on this thread)
# ----------------------------------------------------------------------------------------------------


async def test_graph_view_can_be_turned_off() -> None:
    status = {"ready": True, "reasons": [], "sources": [], "sinks": []}
    server = HttpServer("127.0.0.1:0", lambda: (True, []), lambda: status, CollectorRegistry(), {}, graph_view=False)
    await server.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as session:
            async with session.get("/graph/data", params={"id": "person-1"}) as response:
                assert response.status == 404
                assert (await response.json())["error"] == (
                    "the graph view is turned off here (daemon.graph_view = false)"
                )
            for path in ("/", "/graph", "/status/history"):
                async with session.get(path) as response:
                    assert response.status == 200, path
    finally:
        await server.stop()


def test_the_pages_are_served_on_loopback_unless_configured_otherwise() -> None:
    daemon = DaemonConfig()
    assert daemon.http_address == "127.0.0.1:9464" and daemon.graph_view is True
    assert HttpServer(":0", lambda: (True, []), dict, CollectorRegistry()).host == "127.0.0.1"


def test_lag_history_keeps_the_last_window() -> None:
    history = LagHistory(interval=5.0, window=60.0)
    for i in range(30):
        source = {"source": "s", "lag_seconds": float(i), "changes_applied": i * 10, "caught_up": i == 29}
        history.sample({"sources": [source]}, now=1000.0 + 5 * i)
    samples = history.document()["sources"]["s"]
    assert len(samples) == 12  # 60 s of 5 s samples
    assert samples[0] == [1000.0 + 5 * 18, 18.0, 180, False]
    assert samples[-1] == [1000.0 + 5 * 29, 29.0, 290, True]


# ----------------------------------------------------------------------------------------------------
# The pages in a real browser
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [test] extra")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A fresh page that records console errors, page errors and requests that left the daemon."""

    def __init__(self, browser: Any, daemon: LiveDaemon | StaticStatus) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("request", lambda r: r.url.startswith(daemon.url) or self.problems.append(f"request to {r.url}"))

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()


def test_status_page_shows_each_source_and_sink(browser: Any, daemon: LiveDaemon) -> None:
    page = Page(browser, daemon)
    page.page.goto(daemon.url + "/")
    page.page.wait_for_function("() => Number(document.body.dataset.refreshes || 0) >= 1", timeout=10_000)
    assert page.text("#readiness") == "ready"
    for name in ("sample", "hostile", "mirror", "analytics"):
        row = f'#sources tr[data-source="{name}"]'
        assert page.text(f"{row} td.name") == name
        assert page.text(f"{row} td.state") == "caught_up"
        assert page.text(f"{row} td:nth-child(4)") == "caught up"
        assert page.page.locator(f"{row} svg.sparkline polyline").count() == 1  # history has samples by now
    applied = daemon.get_json("/status")[1]["sources"][0]["changes_applied"]
    assert page.text('#sources tr[data-source="sample"] td.num') == f"{applied:,}"
    assert page.text('#sinks tr[data-sink="local"]').split("\t")[:3] == ["local", "falkordb", "healthy"]
    assert page.text('#sinks tr[data-sink="neptune"]').split("\t")[:3] == ["neptune", "neptune", "healthy"]
    assert page.text("#dead-letters") == "0"
    assert page.page.locator("#leases-section").is_hidden()  # the SQLite store has no leases to show
    assert page.page.locator("#event-sinks-section").is_hidden()  # no source fans out to event sinks
    assert page.problems == []


def test_graph_view_draws_the_neighbourhood(browser: Any, daemon: LiveDaemon) -> None:
    _, data = graph_data(daemon, id="person-1")
    page = Page(browser, daemon)
    page.page.goto(daemon.url + "/graph?id=person-1")
    page.page.wait_for_function("() => document.body.dataset.state === 'drawn'", timeout=10_000)
    assert page.page.evaluate("document.body.dataset.nodes") == str(len(data["nodes"]))
    assert page.page.evaluate("document.body.dataset.edges") == str(len(data["edges"]))
    assert page.page.locator("#cy canvas").count() >= 1
    assert page.text("#message").startswith(f"{len(data['nodes'])} vertices, {len(data['edges'])} edges")
    assert page.text("#details-title") == "person-1"
    assert data["nodes"][0]["properties"]["name"] in page.text("#details-props")
    assert page.problems == []


def test_graph_view_shows_hostile_data_as_text(browser: Any, daemon: LiveDaemon) -> None:
    page = Page(browser, daemon)
    page.page.goto(daemon.url + "/graph?" + urllib.parse.urlencode({"id": HOSTILE_ID, "sink": "neptune"}))
    page.page.wait_for_function("() => document.body.dataset.state === 'drawn'", timeout=10_000)
    assert page.page.evaluate("document.body.dataset.nodes") == "3"
    assert page.text("#details-title") == HOSTILE_ID
    assert HOSTILE_LABEL in page.text("#details-kind")
    assert HOSTILE_BIO in page.text("#details-props")
    assert page.page.locator("img, b, i, br, main script").count() == 0
    assert page.page.evaluate("document.body.dataset.pwned") is None
    assert page.page.locator("#sink").input_value() == "neptune"
    assert page.problems == []


def test_graph_view_says_when_the_vertex_is_missing(browser: Any, daemon: LiveDaemon) -> None:
    page = Page(browser, daemon)
    page.page.goto(daemon.url + "/graph?id=nobody")
    page.page.wait_for_function("() => document.body.dataset.state === 'error'", timeout=10_000)
    assert page.text("#message") == "no vertex with id 'nobody' in sink 'local'"
    assert page.problems == ["console: Failed to load resource: the server responded with a status of 404 (Not Found)"]


class StaticStatus:
    """The daemon's HTTP server on a loop of its own thread, answering a fixed status document: the page's
    rendering of states a test daemon does not easily reach (not ready, a stopped source, leases and owners, a
    failing sink, dead letters, partition positions)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = HttpServer(
            "127.0.0.1:0",
            lambda: (status["ready"], status["reasons"]),
            lambda: status,
            CollectorRegistry(),
            {},
            history=LagHistory(0.1, 10),
        )
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


TROUBLED = {
    "ready": False,
    "reasons": ["source social: expired", "sink replica: failing (throttling: slow down)"],
    "draining": False,
    "uptime_seconds": 3723.0,
    "sources": [
        {
            "source": "orders<script>",
            "state": "polling",
            "position": {"shard-1": ["00000000000000000042"], "shard-2": ["SHARD_END"]},
            "caught_up": False,
            "lag_seconds": 12.2,
            "changes_applied": 1234567,
            "sink": "replica",
            "sink_healthy": False,
            "restarting_after": None,
            "error": None,
            "owner_id": "host-a:123:<b>ab</b>",
            "leases": [
                {"partition": "shard-1", "owner": "host-a:123:<b>ab</b>", "counter": 7},
                {"partition": "shard-2", "owner": None, "counter": 3, "parents": ["shard-1"]},
            ],
        },
        {
            "source": "main",
            "state": "polling",
            "position": [90, 1],
            "caught_up": False,
            "lag_seconds": 2.0,
            "changes_applied": 900,
            "sink": "replica",
            "sink_healthy": True,
            "restarting_after": None,
            "error": None,
            "event_sinks": [
                {
                    "sink": "changes",
                    "kind": "kinesis",
                    "checkpoint_key": "main@changes",
                    "state": "ok",
                    "position": {"": [90, 1]},
                    "lag_seconds": 0.0,
                    "buffered_batches": 0,
                    "buffered_events": 0,
                    "events_sent": 12345,
                    "events_retried": 0,
                    "events_dead_lettered": 0,
                    "healthy": True,
                    "failing_reason": None,
                    "caught_up": True,
                },
                {
                    "sink": "<i>hook</i>",
                    "kind": "webhook",
                    "checkpoint_key": "main@<i>hook</i>",
                    "state": "retrying",
                    "position": {"": [80, 2]},
                    "lag_seconds": 75.0,
                    "buffered_batches": 3,
                    "buffered_events": 1500,
                    "events_sent": 800,
                    "events_retried": 40,
                    "events_dead_lettered": 2,
                    "healthy": True,
                    "failing_reason": None,
                    "caught_up": False,
                },
                {
                    "sink": "alerts",
                    "kind": "sqs",
                    "checkpoint_key": "main@alerts",
                    "state": "down",
                    "position": None,
                    "lag_seconds": 0.0,
                    "buffered_batches": 8,
                    "buffered_events": 4000,
                    "events_sent": 0,
                    "events_retried": 96,
                    "events_dead_lettered": 0,
                    "healthy": False,
                    "failing_reason": "server_error: 503 <b>down</b>",
                    "caught_up": False,
                },
            ],
        },
        {
            "source": "social",
            "state": "expired",
            "position": [12, 3],
            "caught_up": False,
            "lag_seconds": 0.0,
            "changes_applied": 0,
            "sink": "replica",
            "sink_healthy": True,
            "restarting_after": None,
            "error": "stream expired: checkpoint 12/3 is older than the stream",
        },
    ],
    "dead_letters": 4,
    "sinks": [
        {
            "sink": "replica",
            "kind": "neptune",
            "healthy": False,
            "failing_reason": "throttling: slow down",
            "retries": {"throttling": 12, "timeout": 0},
        }
    ],
}


def test_status_page_shows_trouble_owners_and_leases(browser: Any) -> None:
    server = StaticStatus(TROUBLED)
    try:
        page = Page(browser, server)
        page.page.goto(server.url + "/")
        page.page.wait_for_function("() => Number(document.body.dataset.refreshes || 0) >= 2", timeout=10_000)
        assert page.text("#readiness") == "not ready"
        assert page.page.locator("#reasons li").all_inner_texts() == TROUBLED["reasons"]
        orders = '#sources tr[data-source="orders<script>"]'
        assert page.text(f"{orders} td.name") == "orders<script>"
        assert page.text(f"{orders} td:nth-child(3)").splitlines() == [
            "shard-1: 00000000000000000042",
            "shard-2: SHARD_END",
        ]
        assert page.text(f"{orders} td:nth-child(4)") == "12 s"
        assert page.text(f"{orders} td.num") == "1,234,567"
        assert page.text(f"{orders} td:nth-child(8)") == "host-a:123:<b>ab</b>"
        assert page.text(f"{orders} td.note") == "sink failing"
        social = '#sources tr[data-source="social"]'
        assert page.text(f"{social} td.state") == "expired"
        assert page.text(f"{social} td.note") == "stopped: stream expired: checkpoint 12/3 is older than the stream"
        assert page.page.locator("#leases-section").is_visible()
        assert page.page.locator("#leases thead th").all_inner_texts() == [
            "source", "partition", "owner", "counter", "parents"
        ]  # fmt: skip
        rows = [r.split("\t") for r in page.page.locator("#leases tbody tr").all_inner_texts()]
        assert rows == [
            ["orders<script>", "shard-1", "host-a:123:<b>ab</b>", "7", "–"],
            ["orders<script>", "shard-2", "–", "3", '["shard-1"]'],
        ]
        assert page.text('#sinks tr[data-sink="replica"]').split("\t")[:4] == [
            "replica", "neptune", "failing: throttling: slow down", "throttling 12"
        ]  # fmt: skip
        assert (page.text("#dead-letters"), page.text("#retries"), page.text("#uptime")) == ("4", "12", "62 min")
        assert page.page.locator("#event-sinks-section").is_visible()
        lanes = {r.split("\t")[1]: r.split("\t") for r in page.page.locator("#event-sinks tbody tr").all_inner_texts()}
        assert lanes["changes"] == ["main", "changes", "kinesis", "ok", "90 / 1", "caught up", "0 (0 batches)",
                                    "12,345", "0", "0", ""]  # fmt: skip
        assert lanes["<i>hook</i>"] == ["main", "<i>hook</i>", "webhook", "retrying", "80 / 2", "75 s",
                                        "1,500 (3 batches)", "800", "40", "2", ""]  # fmt: skip
        assert lanes["alerts"] == ["main", "alerts", "sqs", "down", "none yet", "0 ms", "4,000 (8 batches)", "0",
                                   "96", "0", "server_error: 503 <b>down</b>"]  # fmt: skip
        hook = '#event-sinks tr[data-event-sink="main@<i>hook</i>"]'
        assert page.page.locator(f"{hook} td.state.warn").count() == 1
        assert page.page.locator('#event-sinks tr[data-event-sink="main@alerts"] td.state.bad').count() == 1
        assert page.page.locator("b, i, script:not([src])").count() == 0
        assert page.problems == []
    finally:
        server.close()


def test_the_status_command_prints_each_event_sink(capsys: pytest.CaptureFixture[str]) -> None:
    from daemon.cli import main

    server = StaticStatus({**TROUBLED, "sources": [s for s in TROUBLED["sources"] if s["source"] == "main"]})
    try:
        assert main(["status", "--url", server.url]) == 0
    finally:
        server.close()
    out = capsys.readouterr().out
    lines = out[out.index("main event sinks:") :].splitlines()
    assert lines[1].split() == ["sink", "kind", "state", "position", "lag", "buffered", "sent", "retried",
                                "dead-lettered"]  # fmt: skip
    assert lines[2].split() == ["changes", "kinesis", "ok", "90/1", "caught", "up", "0", "(0", "batches)", "12,345",
                                "0", "0"]  # fmt: skip
    assert lines[3].split() == ["<i>hook</i>", "webhook", "retrying", "80/2", "1m", "15s", "1,500", "(3", "batches)",
                                "800", "40", "2"]  # fmt: skip
    assert lines[4].split()[:4] == ["alerts", "sqs", "down", "-"]
    assert "  alerts: server_error: 503 <b>down</b>" in lines
