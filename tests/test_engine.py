"""The embedded FalkorDB engine: durability across restarts and taking over from a stale owner."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from falkordb import FalkorDB

from daemon.engine import EmbeddedFalkorDB, EngineError, start_engine_in_thread


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
