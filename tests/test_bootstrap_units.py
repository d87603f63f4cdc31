"""Bootstrap pieces on their own: the Neptune snapshot reader against the stand (position first, keyset pages,
dangling edges, values), progress output, the residual spool, prefetching, error texts."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from daemon.aws import open_client
from daemon.bootstrap.loader import LoaderFailed, LoadResult
from daemon.bootstrap.neptune_reader import NeptuneSnapshotReader, _check_progress
from daemon.bootstrap.progress import Progress
from daemon.bootstrap.records import BootstrapConfigError, BootstrapError, SnapshotEdge, SnapshotVertex
from daemon.bootstrap.runner import BootstrapResult, Stage, _prefetch, bootstrap_error_text
from daemon.bootstrap.spool import ChangeSpool
from daemon.model import GraphChange
from tests.stand.bootstrap_graph import write_graph
from tests.stand.daemon_process import AWS_ENV
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import ReferenceGraph


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    yield


async def _read(stand: NeptuneStand, page_size: int) -> tuple[NeptuneSnapshotReader, dict, list, list]:
    async with AsyncExitStack() as stack:
        client = await open_client(stack, "neptunedata", endpoint=stand.url, region="us-east-1")
        reader = NeptuneSnapshotReader(client, source="main", page_size=page_size)
        position = await reader.position_before()
        vertices = [v async for page in reader.vertices() for v in page]
        edges = [e async for page in reader.edges() for e in page]
    return reader, position, vertices, edges


def _label(vertex_id: str, label: str = "L") -> dict[str, Any]:
    return {"op": "ADD", "data": {"id": vertex_id, "type": "vl", "key": "label", "value": {"value": label}}}


async def test_position_first_then_every_element_once_in_small_pages(stand: NeptuneStand) -> None:
    graph = ReferenceGraph(strict=False)
    weird = ["v1", "v 2", "v'3", 'v"4"', "vé5", "頂点6", "v`7", "v%8", "🙂9", "v\\10", "a", "Z", "10", "9"]
    for i, vertex_id in enumerate(weird):
        graph.add_vertex(vertex_id, {"L", f"K{i % 3}"}, {"n": i, "s": f"s{i}", "f": i / 2, "b": i % 2 == 0})
    for i in range(len(weird) - 1):
        graph.add_edge(f"e{i}", "T" if i % 2 else "likes it", weird[i], weird[i + 1], {"w": i})
    write_graph(stand, graph)
    stand.stream.append_commit([_label("v1")])
    stand.stream.append_commit([_label("v1", "M"), _label("v1", "N")])
    reader, position, vertices, edges = await _read(stand, page_size=3)
    assert position == {"": (2, 2)}
    assert sorted(v.id for v in vertices) == sorted(weird)
    got = {v.id: v for v in vertices}
    for vertex_id, vertex in graph.vertices.items():
        assert set(got[vertex_id].labels) == vertex.labels and got[vertex_id].props == vertex.props
    assert {e.id: (e.type, e.from_id, e.to_id, e.props) for e in edges} == {
        edge_id: (edge.type, edge.from_id, edge.to_id, edge.props) for edge_id, edge in graph.edges.items()
    }
    assert reader.dangling == 0 and reader.read_seconds > 0


async def test_an_empty_stream_gives_its_last_valid_event_id(stand: NeptuneStand) -> None:
    _, position, vertices, edges = await _read(stand, page_size=10)
    assert position == {"": (0, 0)} and vertices == [] and edges == []
    stand.stream.append_commit([_label("x")])
    stand.stream.append_commit([_label("y")])
    stand.stream.trim_before(3)  # everything trimmed: the stream still names its last event id
    _, position, _, _ = await _read(stand, page_size=10)
    assert position == {"": (2, 1)}


async def test_edges_whose_endpoint_came_after_the_vertex_pass_are_left_to_the_replay(stand: NeptuneStand) -> None:
    graph = ReferenceGraph(strict=False)
    graph.add_vertex("a", {"L"})
    graph.add_vertex("b", {"L"})
    graph.add_edge("e1", "T", "a", "b")
    write_graph(stand, graph)
    async with AsyncExitStack() as stack:
        client = await open_client(stack, "neptunedata", endpoint=stand.url, region="us-east-1")
        reader = NeptuneSnapshotReader(client, source="main", page_size=10)
        await reader.position_before()
        vertices = [v async for page in reader.vertices() for v in page]
        late = ReferenceGraph(strict=False)
        late.add_vertex("c", {"L"})
        write_graph(stand, late)  # created after the vertex pass, with an edge
        stand.falkordb_graph().query(
            "MATCH (a:__Vertex {`~id`: 'a'}), (c:__Vertex {`~id`: 'c'}) CREATE (a)-[:T {`~id`: 'e2'}]->(c)"
        )
        edges = [e async for page in reader.edges() for e in page]
    assert [v.id for v in vertices] == ["a", "b"]
    assert [e.id for e in edges] == ["e1"] and reader.dangling == 1


def test_a_page_that_does_not_move_on_stops_the_reader() -> None:
    assert _check_progress(None, ["a", "b"], "vertex") == "b"
    with pytest.raises(BootstrapError, match="does not move past"):
        _check_progress("b", ["b", "c"], "vertex")
    with pytest.raises(BootstrapError):
        _check_progress(None, ["a", "a"], "edge")


async def test_values_follow_the_value_rule(tmp_path) -> None:
    class Client:
        async def execute_open_cypher_query(self, **kwargs: Any) -> dict[str, Any]:
            props = {"nan": float("nan"), "inf": float("-inf"), "big": 2**70, "ok": 1.5, "map": {"a": 1}, "~id": "v"}
            return {"results": [{"n": {"~id": "v", "~labels": ["L"], "~properties": props}}]}

    from daemon.deadletter import DeadLetterFile

    reader = NeptuneSnapshotReader(Client(), source="main", page_size=5)
    reader.dead_letters = DeadLetterFile(tmp_path / "dead-letter.jsonl")
    (vertex,) = [v async for page in reader.vertices() for v in page]
    assert vertex.props == {"nan": "NaN", "inf": "-Infinity", "ok": 1.5}
    assert reader.dead_lettered == 2
    lines = (tmp_path / "dead-letter.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"stage":"snapshot"' in lines[0]


def test_progress_line_on_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress("main", stream=out, tty=True, refresh_interval=0)
    progress.begin("snapshot")
    progress.read(vertices=1500)
    progress.read(edges=3000)
    progress.wrote_file(4500, 2_000_000)
    progress.rows_to_load = 4500
    progress.loader("nodes", 1500)
    progress.apply(12)
    progress.finish()
    text = out.getvalue()
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("bootstrap main [snapshot] | read 1,500 v 3,000 e")
    assert "csv 4,500 rows, 1 files, 2.0 MB" in last and "loaded 1,500/4,500" in last and "applied 12" in last
    assert text.endswith("\n")


def test_progress_logs_when_not_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("main", stream=io.StringIO(), tty=False, log_interval=3600)
    progress.begin("snapshot")
    progress.read(vertices=5)  # within the interval: no second log line
    snapshot = progress.snapshot()
    assert snapshot["stage"] == "snapshot" and snapshot["vertices_read"] == 5


def test_spool_keeps_order_and_values(tmp_path) -> None:
    spool = ChangeSpool(tmp_path)
    changes = [
        GraphChange("vl", True, "v1", "L", position=(3, 1)),
        GraphChange("vp", True, "v1", "k", 2**62, position=(3, 1)),
        GraphChange("vp", True, "v1", "f", -0.0, position=(3, 1)),
        GraphChange("e", True, "e1", "T", None, "v1", "v2", position=(3, 1)),
        GraphChange("ep", True, "e1", "s", 'a\nb,"c"', position=(3, 1)),
    ]
    spool.add(changes)
    assert spool.count == 5
    chunks = list(spool.chunks(2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [c for chunk in chunks for c in chunk] == changes
    spool.close()
    assert not spool.path.exists()


async def test_prefetch_overlaps_and_passes_errors_on() -> None:
    async def pages() -> AsyncIterator[int]:
        for i in range(5):
            await asyncio.sleep(0)
            yield i

    assert [x async for x in _prefetch(pages())] == [0, 1, 2, 3, 4]

    async def broken() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("source went away")

    got = []
    with pytest.raises(RuntimeError, match="source went away"):
        async for x in _prefetch(broken()):
            got.append(x)
    assert got == [1]


def test_error_texts_and_summary() -> None:
    result = LoadResult("nodes", "id", "s3://b/p/nodes/", "LOAD_FAILED", "failed", "the loader refused data")
    text = bootstrap_error_text(LoaderFailed(result))
    assert "ended LOAD_FAILED" in text and "no checkpoint was written" in text and "empty it" in text
    config_text = bootstrap_error_text(BootstrapConfigError("bootstrap.s3_bucket: required"))
    assert "empty it" not in config_text
    summary = BootstrapResult("main", "target", "loader", {"": (5, 2)}, vertices=3, edges=2, files=2)
    summary.stages["load"] = Stage(5, 0.5)
    assert "handed off position: stream [5, 2]" in summary.summary() and "10 rows/s" in summary.summary()
    assert SnapshotVertex("v", ("L",)).props == {} and SnapshotEdge("e", "T", "a", "b").props == {}
