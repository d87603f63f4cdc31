"""Batch requests sized by bytes as well as rows (`max_request_bytes` of the Neptune and SPARQL sinks), on the stand.

Neptune refuses an HTTP request over 150 MB with 400 BadRequestException; the stand does the same at a limit
a test lowers. A batch of large rows is sent in halves before it reaches the sink's limit, on the lean path
and through the client alike; a single row is always sent, and one the target refuses is dead-lettered alone;
a target whose limit is below the sink's still converges (the refusal bisects), nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pyoxigraph import DefaultGraph, Literal, NamedNode, Quad

from daemon.aws import SignedCall
from daemon.deadletter import DeadLetterFile
from daemon.model import VERTEX_LABEL, VERTEX_PROPERTY, GraphChange
from daemon.rdf import QuadChange, RdfPlanner
from daemon.scheduler import Planner
from daemon.sinks.analytics import NeptuneAnalyticsSink
from daemon.sinks.aws_base import AwsClientSink
from daemon.sinks.base import GraphSink, PlanApplier, RetryPolicy
from daemon.sinks.neptune import NeptuneSink
from daemon.sinks.sparql import SparqlSink
from tests.stand.comparator import read_falkordb_graph
from tests.stand.moto_process import aws_test_environment
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand

LIMIT = 64 * 1024
PATH = {"neptune": "opencypher", "neptune-analytics": "queries"}


@pytest.fixture(autouse=True)
def credentials() -> Iterator[None]:
    with aws_test_environment():
        yield


def _sink(kind: str, stand: NeptuneStand, limit: int) -> AwsClientSink:
    if kind == "neptune":
        return NeptuneSink("target", endpoint=stand.url, region="us-east-1", max_request_bytes=limit)
    return NeptuneAnalyticsSink(
        "target", graph_id="g-test", endpoint=stand.url, region="us-east-1", max_request_bytes=limit
    )


def _changes(sizes: dict[str, int]) -> list[GraphChange]:
    """A labelled vertex per id with one property `blob` of the given length."""
    out: list[GraphChange] = []
    for n, (vid, size) in enumerate(sizes.items()):
        out.append(GraphChange(VERTEX_LABEL, True, vid, "Doc", position=(n, 0)))
        out.append(GraphChange(VERTEX_PROPERTY, True, vid, "blob", (vid * size)[:size], position=(n, 1)))
    return out


def _applier(sink: GraphSink, dead: Path) -> PlanApplier:
    return PlanApplier(
        sink,
        source="test",
        batch_size=500,
        concurrency=asyncio.Semaphore(4),
        retry=RetryPolicy(initial_seconds=0.01, max_seconds=0.05),
        dead_letters=DeadLetterFile(dead),
    )


async def _apply(sink: AwsClientSink, changes: list[GraphChange], dead: Path, *, lean: bool = True) -> None:
    await sink.start()
    try:
        if not lean:
            assert isinstance(sink._call, SignedCall)
            sink._call = None  # the full client path (the fallback when the lean call cannot be set up)
        applier = _applier(sink, dead)
        planner = Planner(sink.dialect, applier.lookup_edge_types, 1000)
        await applier.apply(await planner.plan(changes))
    finally:
        await sink.close()


def _blobs(stand: NeptuneStand) -> dict[str, int]:
    """Each vertex's id and the length of its `blob`, read back from the stand's engine."""
    graph = read_falkordb_graph(
        stand.falkordb_graph(), hidden_labels=frozenset({HIDDEN_LABEL}), base_label=HIDDEN_LABEL
    )
    return {vid: len(v.props["blob"]) for vid, v in graph.vertices.items() if v.labels == {"Doc"}}


def _dead(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


@pytest.mark.parametrize(("kind", "lean"), [("neptune", True), ("neptune", False), ("neptune-analytics", True)])
async def test_a_batch_of_large_rows_goes_in_requests_under_the_limit(
    kind: str, lean: bool, stand: NeptuneStand, tmp_path: Path
) -> None:
    sizes = {f"doc{i}": 3_000 for i in range(120)}  # ~360 KB of values: one request of 500 rows would carry all
    await _apply(_sink(kind, stand, LIMIT), _changes(sizes), tmp_path / "dead.jsonl", lean=lean)
    assert _blobs(stand) == sizes
    assert 0 < stand.largest_request_bytes[PATH[kind]] <= LIMIT
    assert _dead(tmp_path / "dead.jsonl") == []


async def test_a_single_row_is_sent_alone_and_one_the_target_refuses_is_dead_lettered(
    stand: NeptuneStand, tmp_path: Path
) -> None:
    stand.max_request_bytes = 200_000
    sizes = {f"doc{i}": 2_000 for i in range(40)} | {"big": 100_000, "huge": 250_000}
    await _apply(_sink("neptune", stand, LIMIT), _changes(sizes), tmp_path / "dead.jsonl")
    applied = _blobs(stand)
    assert applied == {vid: size for vid, size in sizes.items() if vid != "huge"}  # `big` went alone, over LIMIT
    dead = _dead(tmp_path / "dead.jsonl")
    assert {d["change"]["id"] for d in dead} == {"huge"}, dead  # its label and property changes
    assert all("exceeds" in d["reason"] for d in dead)


async def test_a_target_with_a_lower_limit_than_the_sink_still_converges(stand: NeptuneStand, tmp_path: Path) -> None:
    stand.max_request_bytes = 48 * 1024  # the operator set max_request_bytes above what the target takes
    sizes = {f"doc{i}": 3_000 for i in range(60)}
    await _apply(_sink("neptune", stand, 16 * 1024 * 1024), _changes(sizes), tmp_path / "dead.jsonl")
    assert _blobs(stand) == sizes  # the refusals bisect the batch down to requests the target takes
    assert _dead(tmp_path / "dead.jsonl") == []


async def test_sparql_updates_of_long_literals_go_in_requests_under_the_limit(
    stand: NeptuneStand, tmp_path: Path
) -> None:
    quads = [
        Quad(NamedNode(f"http://s/{n}"), NamedNode("http://p"), Literal(f"{n} " + "x" * 2_500), DefaultGraph())
        for n in range(100)
    ]
    sink = SparqlSink("rdf", update_url=f"{stand.url}/sparql", sigv4_region="us-east-1", max_request_bytes=LIMIT)
    await sink.start()
    try:
        planner = RdfPlanner()
        window = [QuadChange(True, quad, (1, i + 1)) for i, quad in enumerate(quads)]
        assert await _applier(sink, tmp_path / "dead.jsonl").apply(await planner.plan(window)) == len(quads)
    finally:
        await sink.close()
    assert set(stand.rdf_store.quads_for_pattern(None, None, None, None)) == set(quads)
    assert 0 < stand.largest_request_bytes["sparql"] <= LIMIT
