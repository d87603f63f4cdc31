"""Faults outside the happy path (docs/reliability.md): hostile records, rejected or ineffective changes, page
and window sizes, repairs after a stop. Each test runs the real supervisor in this process against one FalkorDB
engine shared by the module (one graph per test), reading capture files through the `file` source."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falkordb
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import load_config
from daemon.engine import EmbeddedFalkorDB, start_engine_in_thread
from daemon.supervisor import Supervisor
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import DaemonProcess, write_config
from tests.stand.harness import wait_for
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
    """A capture file of `records`; hand-made records get `isLastOp` on the last op of each commit."""
    if not any("isLastOp" in r for r in records):
        records = [
            {**r, "isLastOp": True}
            if i + 1 == len(records) or records[i + 1]["eventId"]["commitNum"] != r["eventId"]["commitNum"]
            else r
            for i, r in enumerate(records)
        ]
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
        sink = {
            "kind": "falkordb",
            "url": engine.url,
            "password": engine.password,
            "graph": self.graph,
            **options.pop("sink", {}),
        }
        self.config = write_config(
            work / "config.toml", data_dir=work / "data", source=source, sink=sink, daemon=options.pop("daemon", {})
        )
        assert not options, options
        self.supervisor: Supervisor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.watch_error: BaseException | None = None

    def run(self, *, exit_when_idle: bool = True, watch: Callable[[Run], None] | None = None) -> int:
        """Run the supervisor on this thread; `watch`, if given, runs in another thread meanwhile."""
        self.loop = asyncio.new_event_loop()
        try:
            self.supervisor = Supervisor(load_config(self.config), exit_when_idle=exit_when_idle)
            watcher = threading.Thread(target=self._watch, args=(watch,), daemon=True) if watch else None
            if watcher:
                watcher.start()
            code = self.loop.run_until_complete(self.supervisor.run())
            if watcher:
                watcher.join(10)
            if self.watch_error is not None:
                raise self.watch_error
            return code
        finally:
            self.loop.close()

    def _watch(self, watch: Callable[[Run], None]) -> None:
        try:
            watch(self)
        except BaseException as exc:
            self.watch_error = exc
            self.stop()

    def readiness_reasons(self) -> list[str]:
        return self.supervisor.readiness()[1] if self.supervisor else ["not started"]

    def stop(self) -> None:
        """SIGTERM, from another thread."""
        self.loop.call_soon_threadsafe(self.supervisor.request_drain)

    def replica(self) -> ReferenceGraph:
        return read_falkordb_graph(
            falkordb.FalkorDB(host=self.engine.host, port=self.engine.port, password=self.engine.password).select_graph(
                self.graph
            )
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


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metric(name: str, **labels: str) -> float:
    from daemon.observability import METRICS

    return METRICS.registry.get_sample_value(name, labels) or 0.0


# ----------------------------------------------------------------------------------------------------
# Resource errors are retried (not ready meanwhile), never dead-lettered
# ----------------------------------------------------------------------------------------------------


def test_out_of_memory_is_retried_until_it_clears_and_nothing_is_dead_lettered(
    engine: EmbeddedFalkorDB, tmp_path: Path
) -> None:
    records = list(generate_history(seed=4, n_changes=300).records())
    admin = redis.Redis(host=engine.host, port=engine.port, password=engine.password)
    run = Run(engine, tmp_path, write_lines(tmp_path / "c.jsonl", records),
              sink={"retry_initial_seconds": 0.01, "retry_max_seconds": 0.2},
              daemon={"restart_backoff_max_seconds": 0.5})  # fmt: skip
    seen: list[list[str]] = []

    def full_then_freed(run: Run) -> None:
        wait_until(lambda: any("OutOfMemoryError" in r for r in run.readiness_reasons()), 30, "not ready: memory")
        seen.append(run.readiness_reasons())
        time.sleep(0.5)  # several retries
        admin.config_set("maxmemory", 0)

    admin.config_set("maxmemory", max(1, admin.info("memory")["used_memory"] - 4096))
    try:
        assert run.run(watch=full_then_freed) == 0
    finally:
        admin.config_set("maxmemory", 0)
    assert seen, "readiness never said the sink was failing"
    assert run.dead_letters() == []
    assert run.supervisor.summary.changes_applied == len(records)
    assert_converged(ReferenceGraph().apply_all(records), run.replica())


# ----------------------------------------------------------------------------------------------------
# Poison outside batch execution; a pipeline that keeps crashing is not ready
# ----------------------------------------------------------------------------------------------------


def test_an_edge_type_with_a_nul_byte_replicates_instead_of_looping(engine: EmbeddedFalkorDB, tmp_path: Path) -> None:
    """The relationship index of such a type used to fail on every restart of the pipeline; names with NUL are
    now stored percent-encoded (`daemon.names`)."""
    records = [
        label(1, 1, "a", "Person"),
        label(1, 2, "b", "Person"),
        edge(2, 1, "ab", "BAD\x00TYPE", "a", "b"),
        prop(2, 2, "ab", "w\x00eight", 1, kind="ep"),
        edge(3, 1, "ba", "KNOWS", "b", "a"),
        prop(4, 1, "a", "name", "Ada"),
    ]
    run = Run(engine, tmp_path, write_lines(tmp_path / "c.jsonl", records))
    assert run.run() == 0
    replica = run.replica()
    assert (replica.edges["ab"].type, replica.edges["ab"].props) == ("BAD\x00TYPE", {"w\x00eight": 1})
    assert replica.edges["ba"].type == "KNOWS" and replica.vertices["a"].props == {"name": "Ada"}
    assert run.dead_letters() == []


def test_a_pipeline_that_keeps_crashing_is_not_ready_and_says_why(engine: EmbeddedFalkorDB, tmp_path: Path) -> None:
    admin = redis.Redis(host=engine.host, port=engine.port, password=engine.password)
    admin.execute_command("ACL", "SETUSER", "noperm", "on", ">secret", "+ping", "+hello", "+client|setinfo")
    records = [label(1, 1, "a", "Person")]
    user_url = f"redis://noperm:secret@{engine.host}:{engine.port}"
    run = Run(engine, tmp_path, write_lines(tmp_path / "c.jsonl", records), sink={"url": user_url},
              daemon={"restart_backoff_max_seconds": 0.5})  # fmt: skip
    seen: list[str] = []

    def crashing(run: Run) -> None:
        wait_until(lambda: any("restarting after a crash" in r for r in run.readiness_reasons()), 30, "not ready")
        seen.extend(run.readiness_reasons())
        run.stop()

    try:
        # Stopped while its sink never became ready: not a success (exit 3), with the reason logged.
        assert run.run(exit_when_idle=False, watch=crashing) == 3
    finally:
        admin.execute_command("ACL", "DELUSER", "noperm")
    assert any("NoPermissionError" in r for r in seen), seen


# ----------------------------------------------------------------------------------------------------
# Identity is never overwritten; changes that took no effect are not "applied"
# ----------------------------------------------------------------------------------------------------


def test_the_id_property_and_the_base_label_are_reserved(engine: EmbeddedFalkorDB, tmp_path: Path) -> None:
    records = [
        label(1, 1, "a", "Person"),
        label(1, 2, "b", "Person"),
        edge(1, 3, "ab", "KNOWS", "a", "b"),
        prop(2, 1, "a", "~id", "hijacked"),
        prop(2, 2, "ab", "~id", "hijacked-edge", kind="ep"),
        label(3, 1, "b", "Replicated", add=False),
        prop(4, 1, "a", "name", "Ada"),
        prop(4, 2, "ab", "since", 2020, kind="ep"),
        prop(4, 3, "b", "name", "Bob"),
    ]
    before = metric("graph_replicator_records_dead_lettered_total", source="main", stage="plan")
    run = Run(engine, tmp_path, write_lines(tmp_path / "c.jsonl", records))
    assert run.run() == 0
    replica = run.replica()
    assert replica.vertices["a"].props == {"name": "Ada"}
    assert replica.vertices["b"].props == {"name": "Bob"}
    assert replica.edges["ab"].props == {"since": 2020}
    lines = run.dead_letters()
    assert [(tuple(line["position"]), line["stage"]) for line in lines] == [
        ((2, 1), "plan"),
        ((2, 2), "plan"),
        ((3, 1), "plan"),
    ]
    assert all(line["reason"].startswith("reserved_name:") for line in lines)
    assert metric("graph_replicator_records_dead_lettered_total", source="main", stage="plan") - before == 3
    assert run.supervisor.summary.changes_applied == len(records) - 3


def test_changes_that_take_no_effect_are_counted_and_dead_lettered(engine: EmbeddedFalkorDB, tmp_path: Path) -> None:
    records = [
        label(1, 1, "a", "Person"),
        prop(2, 1, "ghost", "name", "nobody"),  # a property of a vertex the target does not hold
        edge(3, 1, "ax", "KNOWS", "a", "ghost"),  # an edge to a missing endpoint
        edge(4, 1, "aa", "LIKES", "a", "a"),
        edge(5, 1, "aa", "LIKES", "a", "a", add=False),
        prop(6, 1, "aa", "w", 1, kind="ep"),  # a property of an edge deleted before it (its type is known)
        prop(7, 1, "a", "name", "Ada"),
    ]
    before = {r: metric("graph_replicator_records_no_effect_total", source="main", reason=r)
              for r in ("vertex_missing", "endpoint_missing", "edge_missing")}  # fmt: skip
    run = Run(engine, tmp_path, write_lines(tmp_path / "c.jsonl", records), source={"limit": 5})
    assert run.run() == 0
    after = {r: metric("graph_replicator_records_no_effect_total", source="main", reason=r) - before[r] for r in before}
    assert after == {"vertex_missing": 1, "endpoint_missing": 1, "edge_missing": 1}
    lines = run.dead_letters()
    assert sorted((tuple(line["position"]), line["reason"]) for line in lines) == [
        ((2, 1), "no_effect: vertex_missing"),
        ((3, 1), "no_effect: endpoint_missing"),
        ((6, 1), "no_effect: edge_missing"),
    ]
    assert run.supervisor.summary.changes_applied == len(records) - 3
    assert run.replica().vertices.keys() == {"a"}


# ----------------------------------------------------------------------------------------------------
# A dead letter names exactly the changes that did not take effect
# ----------------------------------------------------------------------------------------------------


def test_one_bad_value_does_not_take_its_coalesced_neighbours_down(engine: EmbeddedFalkorDB, tmp_path: Path) -> None:
    """The target-side half (a sink rejecting one change of a coalesced mutation) is proven on the Neptune stand
    by `test_replication.py::test_poison_change_goes_to_dead_letters_and_the_rest_converges`: FalkorDB holds
    every value the value rule lets through."""
    records = [
        label(1, 1, "a", "Person"),
        prop(1, 2, "a", "name", "Ada"),
        prop(1, 3, "a", "bad", "cut\x00here"),  # no target can hold a NUL value: refused at translation
        prop(1, 4, "a", "age", 36),
        label(1, 5, "a", "Admin"),
    ]
    run = Run(engine, tmp_path, write_lines(tmp_path / "c.jsonl", records), source={"on_malformed": "dead_letter"})
    assert run.run() == 0
    vertex = run.replica().vertices["a"]
    assert vertex.labels == {"Person", "Admin"}
    assert vertex.props == {"name": "Ada", "age": 36}
    lines = run.dead_letters()
    assert [tuple(line["position"]) for line in lines] == [(1, 3)], lines
    assert run.supervisor.summary.changes_applied == len(records) - 1


# ----------------------------------------------------------------------------------------------------
# Bounds: a line over the cap is dead-lettered with its size, and never held in memory
# ----------------------------------------------------------------------------------------------------

_READ_ALL = """
import asyncio, sys
from pathlib import Path
from daemon.deadletter import DeadLetterFile
from daemon.sources.file import FileSource

async def main():
    source = FileSource("s", path=Path(sys.argv[1]), on_malformed="dead_letter", max_record_bytes=1 << 20,
                        dead_letters=DeadLetterFile(Path(sys.argv[2])))
    queue = asyncio.Queue()
    task = asyncio.create_task(source.run(queue, {}))
    changes = 0
    while True:
        batch = await queue.get()
        changes += len(batch.changes)
        if batch.caught_up:
            break
    task.cancel()
    # VmHWM, not ru_maxrss: the latter keeps the peak of the forked parent across exec
    peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(changes, peak_kib // 1024)

asyncio.run(main())
"""


@pytest.mark.parametrize("compressed", [False, True])
def test_a_huge_line_is_dead_lettered_with_its_size_in_bounded_memory(tmp_path: Path, compressed: bool) -> None:
    good = [{**label(1, 1, "a", "Person"), "isLastOp": True}, {**prop(2, 1, "a", "name", "Ada"), "isLastOp": True}]
    huge = 200 << 20
    body = orjson.dumps(good[0]) + b"\n" + b'{"x": "' + b"y" * huge + b'"}\n' + orjson.dumps(good[1]) + b"\n"
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(gzip.compress(body, compresslevel=1) if compressed else body)
    del body
    out = subprocess.run(
        [sys.executable, "-c", _READ_ALL, str(capture), str(tmp_path / "dl.jsonl")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    changes, peak_mib = map(int, out.stdout.splitlines()[-1].split())
    assert changes == 2
    assert peak_mib < 120, f"peak RSS {peak_mib} MiB while reading a {huge >> 20} MiB line"
    (entry,) = [orjson.loads(line) for line in (tmp_path / "dl.jsonl").read_bytes().splitlines()]
    assert entry["line"] == 2 and entry["size"] == huge + 9
    assert "over max_record_bytes" in entry["reason"] and len(entry["text"]) <= 256


# ----------------------------------------------------------------------------------------------------
# A full disk under the embedded engine: not ready, saying so; nothing dead-lettered; converges once freed
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 400 KiB tmpfs (root only: skipped where mounting is not allowed)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount_point)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_a_full_disk_stalls_loudly_and_converges_once_space_is_freed(small_disk: Path, tmp_path: Path) -> None:
    history = generate_history(seed=9, n_changes=30_000)
    capture = write_lines(tmp_path / "capture.jsonl", list(history.records()))
    data_dir = small_disk / "data"
    config = write_config(
        tmp_path / "config.toml",
        data_dir=data_dir,
        source={"kind": "file", "path": str(capture), "limit": 500},
        sink={"kind": "falkordb", "graph": "g", "retry_max_seconds": 1.0},
        daemon={"restart_backoff_max_seconds": 2},
    )
    daemon = DaemonProcess(config)
    try:
        reasons = wait_for(
            lambda: [r for r in daemon_reasons(daemon) if "No space left on device" in r], 60, "not ready: disk full"
        )
        assert any(r.startswith("sink target: failing (resource:") for r in reasons), reasons
        subprocess.run(["mount", "-o", "remount,size=50m", str(small_disk)], check=True)
        assert daemon.wait(120) == 0, daemon.log_tail()
    finally:
        daemon.kill()
    assert not (data_dir / "dead-letter.jsonl").exists()
    engine, stop = start_engine_in_thread(data_dir / "falkordb" / "target")
    try:
        graph = falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("g")
        assert_converged(history.reference, read_falkordb_graph(graph))
    finally:
        stop()


def daemon_reasons(daemon: DaemonProcess) -> list[str]:
    try:
        code, body = daemon.get("/readyz")
    except OSError:
        return []
    return orjson.loads(body).get("reasons", []) if code == 503 else []


# ----------------------------------------------------------------------------------------------------
# A paused target: not ready while a call goes unanswered, long before the call's own timeout
# ----------------------------------------------------------------------------------------------------


def test_a_paused_engine_turns_readiness_false_and_the_run_goes_on_once_it_resumes(
    engine: EmbeddedFalkorDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.supervisor

    monkeypatch.setattr(daemon.supervisor, "UNANSWERED_CALL_SECONDS", 0.5)
    records = list(generate_history(seed=6, n_changes=8000).records())
    # Small windows: a source that is behind fills a window up to `window_max_changes`, so with the default the
    # first window applied could be the whole history, leaving no call for the pause to catch.
    source = {"limit": 100, "queue_size": 1, "window_max_changes": 200}
    run = Run(engine, tmp_path, write_lines(tmp_path / "c.jsonl", records), source=source)
    seen: list[str] = []

    def pause_then_resume(run: Run) -> None:
        wait_until(lambda: run.supervisor.pipelines[0].changes_applied > 0, 30, "progress")
        os.kill(engine.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: any("has not answered" in r for r in run.readiness_reasons()), 10, "not ready")
            seen.extend(run.readiness_reasons())
        finally:
            os.kill(engine.pid, signal.SIGCONT)

    assert run.run(watch=pause_then_resume) == 0
    assert any(r.startswith("sink target: a call has not answered for") for r in seen), seen
    assert run.dead_letters() == []
    assert_converged(ReferenceGraph().apply_all(records), run.replica())
