"""Source graphs for bootstrap tests: a Neptune stand holding a graph, its stream, and changes made during a copy.

`build_scenario` drives the workload generator (`tests.stand.workload`) in two phases: first it creates
`n_vertices` vertices and `n_edges` edges (the graph the source holds when the bootstrap starts), then it keeps
churning (property updates, label changes, edge and vertex drops, re-created ids) for `n_churn` more change
records. `write_graph` puts the first graph into a stand's FalkorDB the way the stand stores Neptune data;
`ChurnApplier` applies the churn in chunks to the stand's stream *and* graph while a bootstrap reads it, as
concurrent writers would. `scenario.final` is the graph the source holds at the end, what the replica must equal.

The stand's openCypher replies carry doubles with 15 significant digits (FalkorDB formats them with `%.15g`), so
a source read through the stand loses the last digits (the comparator compares 15 digits) and turns +-DBL_MAX
into +-inf; the generator here avoids +-DBL_MAX, which would otherwise come back as the string "Infinity".
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from daemon.bootstrap.direct import DirectWriter
from daemon.deadletter import DeadLetterFile
from daemon.names import encode_falkordb_name
from daemon.sinks.base import RetryPolicy
from daemon.sinks.neptune import NeptuneSink
from daemon.sources.pgjson import translate_record
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand, encode_parameter_keys
from tests.stand.workload import ReferenceGraph, _Generator, without_gc

_DBL_MAX = sys.float_info.max


class _SourceGenerator(_Generator):
    def _new_value(self) -> dict[str, Any]:
        while True:
            value = super()._new_value()
            raw = value["value"]
            if not (isinstance(raw, float) and abs(raw) == _DBL_MAX):
                return value


@dataclass
class Scenario:
    initial: ReferenceGraph  # what the source holds when the bootstrap starts
    initial_commits: list[list[dict[str, Any]]]  # the change log that built it
    churn: list[list[dict[str, Any]]]  # commits made while the bootstrap copies
    final: ReferenceGraph  # what the source holds after the churn

    @property
    def churn_records(self) -> int:
        return sum(len(ops) for ops in self.churn)


def _copy(graph: ReferenceGraph) -> ReferenceGraph:
    out = ReferenceGraph(strict=False)
    for vertex_id, vertex in graph.vertices.items():
        out.add_vertex(vertex_id, vertex.labels, vertex.props)
    for edge_id, edge in graph.edges.items():
        out.add_edge(edge_id, edge.type, edge.from_id, edge.to_id, edge.props)
    return out


def build_scenario(seed: int, n_vertices: int, n_edges: int, n_churn: int, *, weird: bool = True) -> Scenario:
    gen = _SourceGenerator(seed, int(n_vertices * 1.25) + 10, weird)
    initial_commits: list[list[dict[str, Any]]] = []
    with without_gc():
        for action, count in ((gen.create_vertex, n_vertices), (gen.add_edge, n_edges)):
            for _ in range(count):
                gen.ops = []
                action()
                initial_commits.append(gen.ops)
        initial = _copy(gen.reference)
        churn: list[list[dict[str, Any]]] = []
        total = 0
        while total < n_churn:
            ops = gen.commit()
            if ops:
                churn.append(ops)
                total += len(ops)
    return Scenario(initial, initial_commits, churn, gen.reference)


def write_graph(stand: NeptuneStand, graph: ReferenceGraph, batch: int = 5000) -> None:
    """Store `graph` in the stand's FalkorDB as the stand stores Neptune data (hidden label, `~id`, encoded names)."""
    handle = stand.falkordb_graph()
    # Labels inline, one statement per label set: `SET n:L` on existing nodes costs about 1 ms a node here.
    by_labels: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for vertex_id, vertex in graph.vertices.items():
        by_labels[tuple(sorted(vertex.labels))].append({"id": vertex_id, "props": encode_parameter_keys(vertex.props)})
    for labels, rows in by_labels.items():
        names = "".join(f":`{encode_falkordb_name(label)}`" for label in labels)
        for start in range(0, len(rows), batch):
            handle.query(
                f"UNWIND $rows AS r CREATE (n:{HIDDEN_LABEL}{names} {{`~id`: r.id}}) SET n += r.props",
                {"rows": rows[start : start + batch]},
            )
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for edge_id, edge in graph.edges.items():
        by_type[edge.type].append(
            {"id": edge_id, "from": edge.from_id, "to": edge.to_id, "props": encode_parameter_keys(edge.props)}
        )
    for edge_type, rows in by_type.items():
        statement = (
            f"UNWIND $rows AS r MATCH (a:{HIDDEN_LABEL} {{`~id`: r.from}}), (b:{HIDDEN_LABEL} {{`~id`: r.to}}) "
            f"CREATE (a)-[e:`{encode_falkordb_name(edge_type)}` {{`~id`: r.id}}]->(b) SET e += r.props"
        )
        for start in range(0, len(rows), batch):
            handle.query(statement, {"rows": rows[start : start + batch]})


def prepare_source(stand: NeptuneStand, scenario: Scenario) -> tuple[int, int]:
    """Reset the stand, store the initial graph, and leave a stream that ends where the graph is (the older
    records trimmed, as retention does). Returns the stream's last event id."""
    stand.reset()
    write_graph(stand, scenario.initial)
    for ops in scenario.initial_commits[-2:]:
        stand.stream.append_commit(ops)
    last = stand.stream.last_event_id()
    assert last is not None
    stand.stream.trim_before(last[0])
    return last


class ChurnApplier:
    """Applies a scenario's churn to a source stand in `chunks` steps: each commit to the stream and, through
    the daemon's own planner and an openCypher sink, to the graph."""

    def __init__(self, stand: NeptuneStand, scenario: Scenario, chunks: int, dead_letters: DeadLetterFile) -> None:
        self.stand = stand
        self.pending = list(scenario.churn)
        self.per_chunk = max(1, -(-len(self.pending) // max(chunks, 1)))
        self.sink = NeptuneSink("source-writer", endpoint=stand.url, region="us-east-1")
        self.writer = DirectWriter(
            self.sink,
            source="source-writer",
            batch_size=2000,
            concurrency=2,
            retry=RetryPolicy(0.02, 0.5, 4),
            dead_letters=dead_letters,
        )
        self.applied_commits = 0

    async def step(self) -> None:
        """Apply the next chunk (nothing once the churn is used up)."""
        if not self.pending:
            return
        await self.sink.start()
        chunk, self.pending = self.pending[: self.per_chunk], self.pending[self.per_chunk :]
        changes = []
        for ops in chunk:
            commit_num = self.stand.stream.append_commit(ops)
            for op_num, op in enumerate(ops, 1):
                record = {"commitTimestamp": 0, "eventId": {"commitNum": commit_num, "opNum": op_num}, **op}
                changes.append(translate_record(record))
        await self.writer.apply(changes)
        self.applied_commits += len(chunk)

    async def finish(self) -> None:
        while self.pending:
            await self.step()
        await self.sink.close()


class InterleavedReader:
    """A snapshot reader that lets `between_pages` run after every page it hands over."""

    def __init__(self, inner: Any, between_pages: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.source = inner.source
        self._between = between_pages

    @property
    def dangling(self) -> int:
        return int(self.inner.dangling)

    @property
    def read_seconds(self) -> float:
        return float(self.inner.read_seconds)

    async def position_before(self) -> dict[str, Any]:
        return await self.inner.position_before()

    async def vertices(self):
        async for page in self.inner.vertices():
            yield page
            await self._between()

    async def edges(self):
        async for page in self.inner.edges():
            yield page
            await self._between()
