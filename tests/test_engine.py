"""The embedded FalkorDB engine: durability across restarts, taking over from a stale owner, restarts of a large
graph that load the graph rather than its history, start-up that follows loading progress, and its password."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.exceptions
from falkordb import FalkorDB
from redis.backoff import NoBackoff
from redis.retry import Retry

from daemon.cypher import vertex_upsert_statement
from daemon.engine import EmbeddedFalkorDB, EngineError, _aof_sizes, read_engine_state, start_engine_in_thread
from daemon.sinks.falkordb import FalkorDBSink


def _graph(engine: EmbeddedFalkorDB):
    return FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph("g")


async def test_write_survives_restart(tmp_path: Path) -> None:
    engine = EmbeddedFalkorDB(tmp_path / "engine")
    await engine.start()
    assert engine.running and engine.url == f"redis://127.0.0.1:{engine.port}"
    assert int((tmp_path / "engine" / "engine.pid").read_text()) == engine.pid
    _graph(engine).query("CREATE (:`odd label` {`~id`: 'v1', name: $name})", {"name": "Ünïcode"})
    await engine.stop()
    assert not engine.running and engine.returncode == 0
    assert not (tmp_path / "engine" / "engine.pid").exists()
    await engine.stop()  # idempotent

    await engine.start()
    try:
        rows = _graph(engine).query("MATCH (n:`odd label`) RETURN n.`~id`, n.name").result_set
        assert rows == [["v1", "Ünïcode"]]
    finally:
        await engine.stop()


async def test_new_owner_terminates_stale_engine(tmp_path: Path) -> None:
    first = EmbeddedFalkorDB(tmp_path)
    await first.start()
    second = EmbeddedFalkorDB(tmp_path)
    try:
        await second.start()
        assert await asyncio.wait_for(first.wait_exited(), 5) is not None
        assert not first.running
        assert int((tmp_path / "engine.pid").read_text()) == second.pid
        await first.stop()  # must not remove the new owner's pidfile
        assert (tmp_path / "engine.pid").exists()
        assert _graph(second).query("RETURN 1").result_set == [[1]]
    finally:
        await second.stop()
        await first.stop()


async def test_pidfile_naming_another_program_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "engine.pid").write_text(f"{os.getpid()}\n")
    engine = EmbeddedFalkorDB(tmp_path)
    await engine.start()
    await engine.stop()


async def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        engine = EmbeddedFalkorDB(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(EngineError, match=r"(?s)exited.*log tail.*in use"):
            await engine.start()
    assert not engine.running
    assert not (tmp_path / "engine.pid").exists()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait for a reaper that never comes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_engine_dies_with_killed_owner(tmp_path: Path) -> None:
    owner_script = (
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from daemon.engine import EmbeddedFalkorDB\n"
        "engine = EmbeddedFalkorDB(Path(sys.argv[1]))\n"
        "asyncio.run(engine.start())\n"
        "print(engine.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        engine_pid = int(owner.stdout.readline())
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while _alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(engine_pid)
    # The next owner finds the stale pidfile naming a dead process and starts normally.
    engine, stop = start_engine_in_thread(tmp_path)
    try:
        assert engine.pid != engine_pid and _graph(engine).query("RETURN 1").result_set == [[1]]
    finally:
        stop()


def test_engine_in_thread_from_sync_code(tmp_path: Path) -> None:
    engine, stop = start_engine_in_thread(tmp_path)
    try:
        assert _graph(engine).query("RETURN 'ok'").result_set == [["ok"]]
    finally:
        stop()
    assert not engine.running
    stop()  # idempotent


# ------------------------------------------------------------------------------------ persistence and access


def _upserts(sink: FalkorDBSink, start: int, stop: int, batch: int = 5000):
    """The daemon's own vertex statement over ids start..stop, in batches (the shape a window writes)."""
    statement = vertex_upsert_statement(sink.dialect, True, True)
    for lo in range(start, stop, batch):
        rows = [{"id": f"v{i}", "props": {"n": i, "name": f"vertex {i}"}} for i in range(lo, min(stop, lo + batch))]
        yield statement, rows


async def test_restart_with_100k_applied_changes_is_quick_after_a_stop_and_after_a_crash(tmp_path: Path) -> None:
    """Defect 0: a restart loads the graph, not its history. With append-only-file replay alone (the old
    configuration) this graph takes minutes to load (the replayed MERGEs find no index), and the engine was
    killed after 30 s of not answering PING."""
    n = 100_000
    sink = FalkorDBSink("t", url=None, engine_dir=tmp_path / "engine", engine_fsync="everysec")
    await sink.start()
    for statement, rows in _upserts(sink, 0, n):
        await sink.execute(statement, rows)
    for statement, rows in _upserts(sink, 0, 20_000):  # updates: history longer than the graph
        await sink.execute(statement, rows)
    await sink.close()

    started = time.monotonic()
    await sink.start()
    clean_restart = time.monotonic() - started
    assert (await sink.query("MATCH (n:Replicated) RETURN count(n) AS c"))[0]["c"] == n

    await sink.close()
    # A crash: a tail written after the last rewrite by an engine of the same directory, then SIGKILL.
    engine = EmbeddedFalkorDB(tmp_path / "engine")
    await engine.start()
    writer = FalkorDBSink("w", url=engine.url, password=engine.password)
    await writer.start()
    for statement, rows in _upserts(writer, n, n + 20_000):
        await writer.execute(statement, rows)
    os.kill(engine.pid, signal.SIGKILL)
    await engine.wait_exited()
    await writer.close()
    sink = FalkorDBSink("t", url=None, engine_dir=tmp_path / "engine")
    started = time.monotonic()
    await sink.start()
    crash_restart = time.monotonic() - started
    try:
        assert (await sink.query("MATCH (n:Replicated) RETURN count(n) AS c"))[0]["c"] == n + 20_000
    finally:
        await sink.close()
    print(
        f"restart with {n + 40_000:,} changes applied: {clean_restart:.2f} s clean, {crash_restart:.2f} s after SIGKILL"
    )
    assert clean_restart < 5 and crash_restart < 10


async def test_start_gives_up_only_when_the_engine_makes_no_progress(tmp_path: Path, monkeypatch) -> None:
    """A stopped (SIGSTOP) engine shows no loading progress: the start gives up after `stall_timeout`, not
    after a fixed wait, and names the reason."""
    engine = EmbeddedFalkorDB(tmp_path, stall_timeout=1.0)
    spawn = engine._spawn

    async def spawn_and_freeze() -> None:
        await spawn()
        os.kill(engine.pid, signal.SIGSTOP)

    monkeypatch.setattr(engine, "_spawn", spawn_and_freeze)
    started = time.monotonic()
    with pytest.raises(EngineError, match="no loading progress for 1 s"):
        await engine.start()
    assert time.monotonic() - started < 10
    assert not engine.running


async def test_start_follows_a_slow_replay_and_compacts_an_old_style_append_only_file(tmp_path: Path) -> None:
    """A data directory as the old configuration left it (every statement in the append-only tail, the index
    created there too, so the replay finds no index): the engine answers nothing until the replay is over, for
    longer than `stall_timeout`, yet the start waits for it (it sees the engine work), and then rewrites the
    file so the next start loads an RDB base."""
    engine = EmbeddedFalkorDB(tmp_path)
    await engine.start()
    client = redis.asyncio.Redis(host=engine.host, port=engine.port, password=engine.password)
    await client.execute_command("GRAPH.QUERY", "g", "CREATE INDEX FOR (n:Replicated) ON (n.`~id`)")
    statement = vertex_upsert_statement(FalkorDBSink("x", url="redis://unused").dialect, True, True)
    for i in range(1100):
        rows = ",".join(f"{{id: 'v{3 * i + j}', props: {{x: {j}}}}}" for j in range(3))
        await client.execute_command("GRAPH.QUERY", "g", f"CYPHER rows=[{rows}] {statement}")
    await client.aclose()
    os.kill(engine.pid, signal.SIGKILL)
    await engine.wait_exited()
    base_before = _aof_sizes(tmp_path / "appendonlydir")[0]

    slow = EmbeddedFalkorDB(tmp_path, stall_timeout=0.3)
    await slow.start()
    try:
        # the start waited through a load twice as long as the stall limit (and more)
        assert slow.last_start_seconds is not None and slow.last_start_seconds > 0.6, slow.last_start_seconds
        print(f"old-style replay: {slow.last_start_seconds:.2f} s with stall_timeout 0.3 s")
        client = slow.client()
        assert (await client.execute_command("GRAPH.QUERY", "g", "MATCH (n:Replicated) RETURN count(n)"))[1] == [[3300]]
        for _ in range(200):  # the rewrite the start asked for runs in the background
            if not (await client.info("persistence"))["aof_rewrite_in_progress"]:
                break
            await asyncio.sleep(0.05)
        await client.aclose()
        assert _aof_sizes(tmp_path / "appendonlydir")[0] > base_before  # the statements now live in an RDB base
    finally:
        await slow.stop()


async def test_engine_requires_its_generated_password(tmp_path: Path) -> None:
    engine = EmbeddedFalkorDB(tmp_path)
    await engine.start()
    try:
        password_file = tmp_path / "engine.password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "engine.conf").stat().st_mode & 0o777 == 0o600
        with open(f"/proc/{engine.pid}/cmdline", "rb") as cmdline:  # noqa: ASYNC230
            assert engine.password.encode() not in cmdline.read()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=engine.host, port=engine.port, retry=Retry(NoBackoff(), 0)).ping()
        assert redis.Redis(host=engine.host, port=engine.port, password=engine.password).ping()
        state = read_engine_state(tmp_path)
        assert state is not None and (state.pid, state.port, state.password) == (
            engine.pid,
            engine.port,
            engine.password,
        )
        assert (tmp_path / "engine.json").stat().st_mode & 0o777 == 0o600
        first = engine.password
    finally:
        await engine.stop()
    assert read_engine_state(tmp_path) is None
    again = EmbeddedFalkorDB(tmp_path)
    await again.start()
    try:
        assert again.password == first  # reused across restarts
        assert redis.Redis(host=again.host, port=again.port, password=first).ping()
    finally:
        await again.stop()


async def test_sources_sharing_an_embedded_sink_start_it_once(tmp_path: Path) -> None:
    """Two sources on one `falkordb` sink without `url` call `start` at the same time (the supervisor starts each
    source's sink in its own task): one engine process starts in the directory, not one per call (a second one
    wrote the same append-only files, and outlived `close`)."""

    def engines_here() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cwd == (tmp_path / "engine").resolve() and b"redis-server" in command:
                found.append(int(pid))
        return found

    sink = FalkorDBSink("shared", url=None, engine_dir=tmp_path / "engine")
    try:
        await asyncio.gather(sink.start(), sink.start(), sink.start())
        assert sink.engine is not None and sink.engine.running
        assert engines_here() == [sink.engine.pid]
        assert (await sink.query("RETURN 1 AS one"))[0]["one"] == 1
    finally:
        await sink.close()
    assert engines_here() == []
