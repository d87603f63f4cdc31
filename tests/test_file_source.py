"""The `file` source: record and page lines, gzip, directories, resume, malformed input, follow (in-process);
the quick start and replays through the real daemon process into embedded FalkorDB (end to end)."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
import time
import zlib
from contextlib import suppress
from pathlib import Path
from typing import Any

import falkordb
import orjson
import pytest

from daemon.deadletter import DeadLetterFile
from daemon.engine import start_engine_in_thread
from daemon.model import ChangeBatch, Position
from daemon.sources.file import CaptureError, FileSource
from tests.stand.comparator import assert_converged, read_falkordb_graph
from tests.stand.daemon_process import DaemonProcess, write_config
from tests.stand.harness import status, wait_for
from tests.stand.workload import ReferenceGraph, generate_history

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "config" / "samples" / "social-history.jsonl.gz"


def sample_records() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gzip.decompress(SAMPLE.read_bytes()).splitlines()]


def lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def position(record: dict[str, Any]) -> Position:
    return (record["eventId"]["commitNum"], record["eventId"]["opNum"])


def page(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A GetPropertygraphStream answer as boto3 returns it (commitTimestampInMillis)."""
    renamed = [{("commitTimestampInMillis" if k == "commitTimestamp" else k): v for k, v in r.items()} for r in records]
    return {
        "lastEventId": records[-1]["eventId"],
        "lastTrxTimestampInMillis": records[-1]["commitTimestamp"],
        "format": "PG_JSON",
        "records": renamed,
        "totalRecords": len(records),
    }


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return list(generate_history(seed=21, n_changes=400).records())


# ----------------------------------------------------------------------------------------------------
# In-process: the source on its own
# ----------------------------------------------------------------------------------------------------


async def read(
    source: FileSource, resume: Position | None = None, *, until_caught_up: int = 1
) -> tuple[list[ChangeBatch], BaseException | None]:
    """Run the source until it has signalled caught-up `until_caught_up` times, or failed."""
    queue: asyncio.Queue[ChangeBatch] = asyncio.Queue(maxsize=4)
    task = asyncio.create_task(source.run(queue, {"": resume} if resume else {}))
    batches: list[ChangeBatch] = []
    error: BaseException | None = None
    try:
        while sum(b.caught_up for b in batches) < until_caught_up:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                batches.append(getter.result())
                continue
            getter.cancel()
            assert task in done, "the source neither produced a batch nor ended"
            error = task.exception()
            assert error is not None, "the source returned"
            break
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    return batches, error


def source(path: Path, tmp_path: Path, **options: Any) -> FileSource:
    return FileSource("cap", path=path, dead_letters=DeadLetterFile(tmp_path / "dead.jsonl"), **options)


def positions(batches: list[ChangeBatch]) -> list[Position]:
    return [c.position for b in batches for c in b.changes]


async def test_record_lines_pages_gzip_members_and_directory_order(records, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "01-records.jsonl").write_bytes(lines(records[:100]))
    pages = b"".join(orjson.dumps(page(records[i : min(i + 40, 200)])) + b"\n" for i in range(100, 200, 40))
    (capture / "02-pages").write_bytes(gzip.compress(pages))  # gzip recognised by its magic, not its name
    members = gzip.compress(lines(records[200:300])) + gzip.compress(b"\n\n" + lines(records[300:]))
    (capture / "03-rest.jsonl.gz").write_bytes(members)
    (capture / ".partial").write_bytes(b"not a capture")
    batches, error = await read(source(capture, tmp_path, limit=64))
    assert error is None
    assert positions(batches) == [position(r) for r in records]
    assert all(len(b.changes) <= 64 for b in batches)
    assert batches[-1].caught_up and batches[-1].position == position(records[-1]) and not batches[-1].changes
    assert [c.commit_ms for b in batches for c in b.changes] == [r["commitTimestamp"] for r in records]


async def test_resume_skips_applied_records_and_does_not_report_old_bad_lines(records, tmp_path: Path) -> None:
    body = lines(records[:10]) + b"{not json\n" + lines(records[10:50])
    path = tmp_path / "c.jsonl"
    path.write_bytes(body)
    batches, error = await read(source(path, tmp_path), resume=position(records[29]))
    assert error is None
    assert positions(batches) == [position(r) for r in records[30:50]]
    assert not (tmp_path / "dead.jsonl").exists()


async def test_nothing_after_the_resume_position_means_caught_up_at_once(records, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(lines(records[:20]))
    batches, error = await read(source(path, tmp_path), resume=position(records[19]))
    assert error is None and len(batches) == 1 and batches[0].caught_up and not batches[0].changes


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        (lambda r: lines(r[:5]) + b'{"eventId": {"commitNum"\n' + lines(r[5:9]), 6, "not valid JSON"),
        (lambda r: lines(r[:5]) + lines(r[3:4]) + lines(r[5:9]), 6, "is not after the previous record's"),
        (lambda r: lines(r[:5]) + b"[1, 2]\n", 6, "expected a JSON object"),
        (lambda r: lines(r[:2]) + orjson.dumps({**r[2], "op": "UPSERT"}) + b"\n", 3, "op must be ADD or REMOVE"),
        (lambda r: orjson.dumps(page(r[:3])) + b"\n" + orjson.dumps({"records": [r[3], 7]}) + b"\n", 2,
         "record 2 of the page: expected a JSON object"),
    ],
)  # fmt: skip
async def test_malformed_line_stops_with_file_line_and_reason(records, tmp_path: Path, body, line, reason) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(body(records))
    batches, error = await read(source(path, tmp_path))
    assert isinstance(error, CaptureError)
    assert f"{path}:{line}: " in str(error) and reason in str(error), error
    assert not any(b.caught_up for b in batches)
    good = [position(r) for r in records[: line - 1]] if "page" not in reason else [position(r) for r in records[:4]]
    assert positions(batches) == good  # everything before the bad line was handed over


async def test_truncated_gzip_names_the_line_after_the_last_complete_one(records, tmp_path: Path) -> None:
    data = gzip.compress(lines(records))
    cut = data[: len(data) // 2]
    complete = zlib.decompressobj(31).decompress(cut).count(b"\n")
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(cut)
    batches, error = await read(source(path, tmp_path))
    assert isinstance(error, CaptureError)
    assert f"{path}:{complete + 1}: the gzip stream ends before its end marker" in str(error)
    assert positions(batches) == [position(r) for r in records[:complete]]


async def test_corrupt_gzip_is_an_error_naming_a_line(records, tmp_path: Path) -> None:
    data = bytearray(gzip.compress(lines(records)))
    middle = len(data) // 2
    data[middle : middle + 8] = b"\xff" * 8
    path = tmp_path / "c.gz"
    path.write_bytes(bytes(data))
    batches, error = await read(source(path, tmp_path))
    assert isinstance(error, CaptureError) and f"{path}:" in str(error)
    assert len(positions(batches)) < len(records)


async def test_dead_letter_mode_sets_bad_lines_aside_and_reads_on(records, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    bad_op = {**records[6], "op": "UPSERT"}
    path.write_bytes(lines(records[:3]) + b"garbage\n" + lines(records[3:6]) + lines([bad_op]) + lines(records[7:20]))
    batches, error = await read(source(path, tmp_path, on_malformed="dead_letter"))
    assert error is None
    assert positions(batches) == [position(r) for r in records[:20] if r is not records[6]]
    assert batches[-1].position == position(records[19])
    dead = [orjson.loads(x) for x in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert [(d["stage"], d["source"], d["file"], d["line"], d["position"]) for d in dead] == [
        ("translate", "cap", str(path), 4, None),
        ("translate", "cap", str(path), 8, list(position(records[6]))),
    ]
    assert dead[0]["text"] == "garbage" and "not valid JSON" in dead[0]["reason"]
    assert dead[1]["record"] == bad_op and "op must be ADD or REMOVE" in dead[1]["reason"]


async def test_follow_reads_appended_lines_and_new_files(records, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    capture.mkdir()
    first = capture / "a.jsonl"
    tail = lines(records[10:11])
    first.write_bytes(lines(records[:10]) + tail[:25])  # the 11th line is still being written
    src = source(capture, tmp_path, follow=True, poll_interval_seconds=0.02)
    queue: asyncio.Queue[ChangeBatch] = asyncio.Queue()
    task = asyncio.create_task(src.run(queue, {}))

    async def until_caught_up() -> list[Position]:
        got = []
        while True:
            batch = await asyncio.wait_for(queue.get(), 5)
            got += [c.position for c in batch.changes]
            if batch.caught_up:
                return got

    try:
        assert await until_caught_up() == [position(r) for r in records[:10]]
        with first.open("ab") as out:
            out.write(tail[25:] + lines(records[11:15]))
        assert await until_caught_up() == [position(r) for r in records[10:15]]
        (capture / "b.jsonl.gz").write_bytes(gzip.compress(lines(records[15:30])))
        assert await until_caught_up() == [position(r) for r in records[15:30]]
        assert src.state == "caught_up" and src.head == position(records[29])
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def test_follow_refuses_a_file_that_arrives_out_of_name_order(records, tmp_path: Path) -> None:
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "b.jsonl").write_bytes(lines(records[10:20]))
    src = source(capture, tmp_path, follow=True, poll_interval_seconds=0.02)
    queue: asyncio.Queue[ChangeBatch] = asyncio.Queue()
    task = asyncio.create_task(src.run(queue, {}))
    try:
        while not (await asyncio.wait_for(queue.get(), 5)).caught_up:
            pass
        (capture / "a.jsonl").write_bytes(lines(records[:10]))
        with pytest.raises(CaptureError, match=r"a\.jsonl appeared after a file that sorts after them was read"):
            await asyncio.wait_for(task, 5)
        assert src.state == "failed"
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, CaptureError):
            await task


async def test_a_missing_path_fails_the_source(tmp_path: Path) -> None:
    batches, error = await read(source(tmp_path / "absent.jsonl", tmp_path))
    assert isinstance(error, CaptureError) and "absent.jsonl: no such file or directory" in str(error)
    assert not batches


# ----------------------------------------------------------------------------------------------------
# End to end: the real daemon process and the embedded FalkorDB engine
# ----------------------------------------------------------------------------------------------------


def replica(data_dir: Path, sink: str = "target", graph: str = "replica") -> ReferenceGraph:
    """Read back what the daemon wrote into its embedded engine (after it exited)."""
    engine, stop = start_engine_in_thread(data_dir / "falkordb" / sink)
    try:
        return read_falkordb_graph(
            falkordb.FalkorDB(host=engine.host, port=engine.port, password=engine.password).select_graph(graph)
        )
    finally:
        stop()


def file_config(tmp_path: Path, path: Path, *, sink: dict | None = None, **source: object) -> Path:
    return write_config(
        tmp_path / "config.toml",
        data_dir=tmp_path / "data",
        source={"kind": "file", "path": str(path), **source},
        sink={"kind": "falkordb", "graph": "replica", **(sink or {})},
    )


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(log_text: str) -> list[dict[str, Any]]:
    out = []
    for line in log_text.splitlines():
        with suppress(orjson.JSONDecodeError):
            entry = orjson.loads(line)
            if isinstance(entry, dict) and entry.get("level") == "error":
                out.append(entry)
    return out


@pytest.mark.slow
def test_quickstart_replays_the_sample_and_a_second_run_is_a_no_op(tmp_path: Path) -> None:
    expected = ReferenceGraph().apply_all(sample_records())
    env = {"GRAPH_REPLICATOR__DAEMON__DATA_DIR": str(tmp_path / "qs")}
    started = time.monotonic()
    first = run_cli("run", "--config", "config/quickstart.toml", "--exit-when-idle", env=env)
    elapsed = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    counts = f"target 'local' holds {len(expected.vertices):,} vertices and {len(expected.edges):,} edges"
    out = first.stdout.splitlines()
    assert out[0].startswith(f"applied {len(sample_records()):,} changes in ") and out[0].endswith("changes/s)")
    assert out[1:] == [
        counts,
        f"look at it:  {sys.executable} -m daemon query --config config/quickstart.toml 'MATCH (n) RETURN n LIMIT 5'",
    ]
    assert "every source is caught up" in first.stderr  # logs go to stderr, the summary to stdout
    print(f"quick start: {elapsed:.2f} s\n{first.stdout}")

    second = run_cli("run", "--config", "config/quickstart.toml", "--exit-when-idle", env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0].startswith("applied 0 changes in ")
    assert second.stdout.splitlines()[1:] == out[1:]

    query = run_cli(
        "query",
        "--config",
        "config/quickstart.toml",
        "--format",
        "json",
        "MATCH (n:Person) RETURN count(n) AS people",
        env=env,
    )
    assert query.returncode == 0, query.stderr
    people = sum("Person" in v.labels for v in expected.vertices.values())
    assert orjson.loads(query.stdout) == {"people": people}
    assert_converged(expected, replica(tmp_path / "qs", sink="local", graph="social"))


@pytest.mark.slow
def test_sigkill_half_way_then_running_again_converges(tmp_path: Path) -> None:
    records = sample_records()
    config = file_config(tmp_path, SAMPLE, limit=40, queue_size=1, sink={"batch_size": 10, "concurrency": 1})
    daemon = DaemonProcess(config, exit_when_idle=False)
    try:
        wait_for(lambda: (status(daemon)["sources"][0]["position"] or [0])[0] >= 300, 60, "progress")
        at_kill = status(daemon)["sources"][0]["position"]
    finally:
        daemon.kill()
    assert tuple(at_kill) < position(records[-1]), "the run finished before it was killed: slow it down"
    rerun = DaemonProcess(config)
    assert rerun.wait(120) == 0, rerun.log_tail()
    assert_converged(ReferenceGraph().apply_all(records), replica(tmp_path / "data"))


def _bad_capture_cases(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    """A truncated gzip capture and a plain one with bad JSON in the middle: (file, line of the damage)."""
    raw = SAMPLE.read_bytes()
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    complete = zlib.decompressobj(31).decompress(raw[: len(raw) // 2]).count(b"\n")
    corrupted = tmp_path / "corrupted.jsonl"
    text = gzip.decompress(raw).splitlines(keepends=True)
    text[2000] = b'{"commitTimestamp": 17, "eventId": {"commitNum": 6\n'
    corrupted.write_bytes(b"".join(text))
    return {"truncated": (truncated, complete + 1), "corrupted": (corrupted, 2001)}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "corrupted"])
def test_damaged_capture_stops_with_file_and_line(tmp_path: Path, case: str) -> None:
    path, line = _bad_capture_cases(tmp_path)[case]
    daemon = DaemonProcess(file_config(tmp_path, path))
    assert daemon.wait(60) == 3, daemon.log_tail()
    errors = [e for e in daemon.log_lines() if e.get("level") == "error"]
    assert any(f"{path}:{line}: " in e.get("error", "") for e in errors), daemon.log_tail()
    # Everything before the damage was applied and checkpointed; nothing after it.
    expected = ReferenceGraph().apply_all(sample_records()[: line - 1])
    assert_converged(expected, replica(tmp_path / "data"))


@pytest.mark.slow
def test_dead_letter_mode_sets_the_bad_line_aside_and_the_rest_converges(tmp_path: Path) -> None:
    path, line = _bad_capture_cases(tmp_path)["corrupted"]
    daemon = DaemonProcess(file_config(tmp_path, path, on_malformed="dead_letter"))
    assert daemon.wait(60) == 0, daemon.log_tail()
    dead = [orjson.loads(x) for x in (tmp_path / "data" / "dead-letter.jsonl").read_bytes().splitlines()]
    assert [(d["file"], d["line"], d["stage"]) for d in dead] == [(str(path), line, "translate")]
    assert "not valid JSON" in dead[0]["reason"] and dead[0]["text"].startswith('{"commitTimestamp": 17')
    records = sample_records()
    expected = ReferenceGraph(strict=False).apply_all(records[: line - 1] + records[line:])
    assert_converged(expected, replica(tmp_path / "data"))


@pytest.mark.slow
def test_directory_of_page_and_record_files_converges(tmp_path: Path) -> None:
    records = sample_records()
    capture = tmp_path / "capture"
    capture.mkdir()
    pages = b"".join(orjson.dumps(page(records[i : i + 500])) + b"\n" for i in range(0, 2000, 500))
    (capture / "part-0001.json").write_bytes(pages)
    (capture / "part-0002.jsonl.gz").write_bytes(gzip.compress(lines(records[2000:4000])))
    (capture / "part-0003").write_bytes(lines(records[4000:]))
    daemon = DaemonProcess(file_config(tmp_path, capture))
    assert daemon.wait(60) == 0, daemon.log_tail()
    assert_converged(ReferenceGraph().apply_all(records), replica(tmp_path / "data"))
