"""The test stand as the end-to-end benchmarks use it: one Neptune-compatible endpoint holding a history in its
stream, the real daemon run against it as a process, and the plans the daemon's planner makes of a history.

Room in the design: shared by `tests/bench/end_to_end.py` and `tests/bench/concurrency.py`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from daemon.cypher import Dialect
from daemon.scheduler import Planner
from daemon.sources.pgjson import translate_record
from tests.stand.comparator import diff_graphs, read_falkordb_graph
from tests.stand.daemon_process import DaemonProcess, write_config
from tests.stand.harness import load_history
from tests.stand.neptune_endpoint import HIDDEN_LABEL, NeptuneStand
from tests.stand.workload import History, ReferenceGraph

PAGE = 1000  # the neptune source's default `limit`
WINDOW_PAGES = 8  # a full queue (`queue_size` 8) during a catch-up
BATCH_SIZE = 500  # the sinks' default


def load_stand(stand: NeptuneStand, history: History) -> None:
    """Put a history into the stand's stream (the target graph is left alone)."""
    stand.stream.clear()
    load_history(stand, history)


def clear_stand_graph(stand: NeptuneStand) -> None:
    """Delete the stand's target graph (its openCypher side), keeping the stream."""
    stand._call(stand._reset())


def stand_graph(stand: NeptuneStand) -> ReferenceGraph:
    return read_falkordb_graph(stand.falkordb_graph(), hidden_labels=frozenset({HIDDEN_LABEL}), base_label=HIDDEN_LABEL)


def differences(expected: ReferenceGraph, actual: ReferenceGraph) -> list[str]:
    return diff_graphs(expected, actual, limit=5)


def _stamp(line: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def run_daemon(tmp: Path, stand: NeptuneStand, sink: dict[str, Any], *, timeout: float = 900) -> float:
    """Run `graph-replicator run --exit-when-idle` over the stand's stream into `sink`; return the seconds from
    the daemon's start (HTTP server up, before the sink starts) to "every source is caught up" (its own log),
    which leaves out the interpreter's start-up and imports."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = write_config(
        tmp / "config.toml",
        data_dir=tmp / "data",
        source={
            "kind": "neptune",
            "endpoint": stand.url,
            "region": "us-east-1",
            "limit": PAGE,
            "poll_interval_max_seconds": 0.2,
        },
        sink=sink,
        daemon={"log_level": "info"},
    )
    daemon = DaemonProcess(config)
    code = daemon.wait(timeout)
    if code != 0:
        raise RuntimeError(f"daemon exited {code}; log:\n{daemon.log_tail()}")
    started = done = None
    for line in daemon.log_lines():
        if line.get("event") == "http server listening":
            started = _stamp(line)
        elif str(line.get("event", "")).startswith("every source is caught up"):
            done = _stamp(line)
    if started is None or done is None:
        raise RuntimeError(f"daemon log lacks start or caught-up lines:\n{daemon.log_tail()}")
    return done - started


def planned_statements(
    history: History, dialect: Dialect, window_pages: int = WINDOW_PAGES
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The (statement, rows) the daemon's planner makes of `history` read in pages of `PAGE` records and windows
    of `window_pages` pages, cut in chunks of `BATCH_SIZE` rows, in the order they may run one after another."""
    import asyncio

    async def no_lookup(ids: list[str]) -> dict[str, str]:
        return {}

    planner = Planner(dialect, no_lookup, 10**9)
    records = list(history.records())
    window = PAGE * window_pages
    for start in range(0, len(records), window):
        changes = [translate_record(orjson.loads(orjson.dumps(r))) for r in records[start : start + window]]
        plan = asyncio.run(planner.plan(changes))
        for batch in plan.batches():
            for i in range(0, len(batch.rows), BATCH_SIZE):
                yield batch.statement, batch.rows[i : i + BATCH_SIZE]


def edge_types_of(history: History) -> list[str]:
    return sorted({op["data"]["value"]["value"] for op in history.ops() if op["data"]["type"] == "e"})


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
