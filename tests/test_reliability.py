"""Faults outside the happy path (docs/reliability.md): hostile records, rejected or ineffective changes, page
and window sizes, repairs after a stop. Each test runs the real supervisor in this process against one FalkorDB
engine shared by the module (one graph per test), reading capture files through the `file` source."""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falkordb
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import load_config
from daemon.engine import EmbeddedFalkorDB, start_engine_in_thread
from daemon.supervisor import Supervisor
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import write_config
from tests.stand.workload import ReferenceGraph, generate_history

_graph_names = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFalkorDB]:
    started, stop = start_engine_in_thread(tmp_path_factory.mktemp("engine"), fsync="no")
    try:
        yield started
    finally:
        stop()


def write_lines(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


class Run:
    """One in-process `run --exit-when-idle` of a file source into a fresh graph of the module's engine."""

    def __init__(self, engine: EmbeddedFalkorDB, work: Path, input_path: Path, **options: Any) -> None:
        self.engine = engine
        self.work = work
        self.graph = f"g{next(_graph_names)}"
        work.mkdir(parents=True, exist_ok=True)
        source = {"kind": "file", "path": str(input_path), **options.pop("source", {})}
        sink = {"kind": "falkordb", "url": engine.url, "graph": self.graph, **options.pop("sink", {})}
        self.config = write_config(
            work / "config.toml", data_dir=work / "data", source=source, sink=sink, daemon=options.pop("daemon", {})
        )
        assert not options, options
        self.supervisor: Supervisor | None = None

    def run(self) -> int:
        self.supervisor = Supervisor(load_config(self.config), exit_when_idle=True)
        return asyncio.run(self.supervisor.run())

    def replica(self) -> ReferenceGraph:
        return read_falkordb_graph(
            falkordb.FalkorDB(host=self.engine.host, port=self.engine.port).select_graph(self.graph)
        )

    def dead_letters(self) -> list[dict[str, Any]]:
        path = self.work / "data" / "dead-letter.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def record(commit: int, op: int, kind: str, element: str, value: Any, *, add: bool = True, **data: Any) -> dict:
    body = {"id": element, "type": kind, "value": value, **data}
    return {"commitTimestamp": 1_700_000_000_000, "eventId": {"commitNum": commit, "opNum": op}, "data": body,
            "op": "ADD" if add else "REMOVE"}  # fmt: skip


def label(commit: int, op: int, vertex: str, name: str, *, add: bool = True) -> dict:
    return record(commit, op, "vl", vertex, {"value": name, "dataType": "String"}, add=add)


def prop(commit: int, op: int, element: str, key: str, value: Any, *, add: bool = True, kind: str = "vp") -> dict:
    data_type = "String" if isinstance(value, str) else "Long" if isinstance(value, int) else "Double"
    return record(commit, op, kind, element, {"value": value, "dataType": data_type}, add=add, key=key)


def edge(commit: int, op: int, edge_id: str, type_: str, source: str, target: str, *, add: bool = True) -> dict:
    value = {"value": type_, "dataType": "String"}
    return record(commit, op, "e", edge_id, value, add=add, **{"from": source, "to": target})


# ----------------------------------------------------------------------------------------------------
# A stopped file source keeps its checkpoint before the bad line
# ----------------------------------------------------------------------------------------------------


def test_repaired_line_is_applied_after_a_stop(engine: EmbeddedFalkorDB, tmp_path: Path) -> None:
    records = list(generate_history(seed=3, n_changes=300).records())
    bad_at = 120
    broken = [dict(r) for r in records]
    broken[bad_at] = {**records[bad_at], "op": "BOGUS"}
    capture = write_lines(tmp_path / "capture.jsonl", broken)
    run = Run(engine, tmp_path, capture, source={"limit": 50})
    assert run.run() == 3  # the source stopped on the bad line
    assert "BOGUS" in run.supervisor.failed["main"]
    checkpoint = tuple(run.supervisor.pipelines[0].positions[""])
    bad_position = (records[bad_at]["eventId"]["commitNum"], records[bad_at]["eventId"]["opNum"])
    assert checkpoint < bad_position

    write_lines(capture, records)  # the operator repairs the line and runs again
    assert run.run() == 0
    assert_converged(ReferenceGraph().apply_all(records), run.replica())


# ----------------------------------------------------------------------------------------------------
# The final graph does not depend on page, window or batch sizes, nor on concurrency
# ----------------------------------------------------------------------------------------------------


def _history_with_updates_in_either_order(seed: int) -> list[dict[str, Any]]:
    """A generated history in which some property updates come as ADD-new then REMOVE-old (Neptune writes the
    two in either order within a commit)."""
    history = generate_history(seed=seed, n_changes=400, n_vertex_ids=25)
    rng = random.Random(seed)
    for ops in history.commits:
        for i in range(len(ops) - 1):
            a, b = ops[i], ops[i + 1]
            if (
                a["op"] == "REMOVE"
                and b["op"] == "ADD"
                and a["data"]["type"] in ("vp", "ep")
                and (a["data"]["type"], a["data"]["id"], a["data"]["key"])
                == (b["data"]["type"], b["data"]["id"], b["data"].get("key"))
                and rng.random() < 0.5
            ):
                ops[i], ops[i + 1] = b, a
    return list(history.records())


_EITHER_ORDER = _history_with_updates_in_either_order(11)


def test_the_either_order_history_has_split_updates() -> None:
    swapped = sum(
        1
        for a, b in itertools.pairwise(_EITHER_ORDER)
        if a["op"] == "ADD"
        and b["op"] == "REMOVE"
        and a["data"].get("key")
        and a["data"].get("key") == b["data"].get("key")
        and a["data"]["id"] == b["data"]["id"]
    )
    assert swapped >= 10


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 40),
    window=st.integers(1, 60),
    concurrency=st.integers(1, 4),
    batch_size=st.integers(1, 50),
)
def test_the_graph_is_the_same_for_every_page_window_and_batch_size(
    engine: EmbeddedFalkorDB, limit: int, window: int, concurrency: int, batch_size: int
) -> None:
    with tempfile.TemporaryDirectory() as work:
        capture = write_lines(Path(work) / "capture.jsonl", _EITHER_ORDER)
        run = Run(
            engine,
            Path(work),
            capture,
            source={"limit": limit, "window_max_changes": window, "queue_size": 2},
            sink={"batch_size": batch_size, "concurrency": concurrency},
        )
        assert run.run() == 0
        assert_converged(ReferenceGraph(strict=False).apply_all(_EITHER_ORDER), run.replica())
        assert run.dead_letters() == []


def test_an_update_split_across_windows_keeps_the_new_value(engine: EmbeddedFalkorDB, tmp_path: Path) -> None:
    records = [
        label(1, 1, "v", "Person"),
        prop(1, 2, "v", "k", "old"),
        prop(2, 1, "v", "k", "new"),  # ADD new, then REMOVE old, in one commit
        prop(2, 2, "v", "k", "old", add=False),
    ]
    for limit in (1, 2, 3, 4):
        run = Run(engine, tmp_path / f"limit{limit}", write_lines(tmp_path / f"c{limit}.jsonl", records),
                  source={"limit": limit, "window_max_changes": limit, "queue_size": 1})  # fmt: skip
        assert run.run() == 0
        assert run.replica().vertices["v"].props == {"k": "new"}, f"limit {limit}"
