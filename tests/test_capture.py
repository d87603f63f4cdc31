"""`graph-replicator capture` against the test stand: the capture is a valid file with the wire field names, and
replayed through the `file` source it builds the same graph as the reference (end to end, real processes)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.capture import wire_record
from tests.stand.comparator import assert_converged
from tests.stand.daemon_process import AWS_ENV, DaemonProcess, write_config
from tests.stand.harness import load_history, neptune_source, wait_for
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import ReferenceGraph, generate_history
from tests.test_file_source import file_config, replica

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def history():
    return generate_history(seed=13, n_changes=4000)


def capture_config(tmp_path: Path, stand: NeptuneStand, **source: object) -> Path:
    return write_config(
        tmp_path / "source.toml",
        data_dir=tmp_path / "capture-data",
        source=neptune_source(stand, limit=700, **source),
        sink={"kind": "falkordb"},
    )


def capture(config: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "daemon", "capture", "--config", str(config), "--source", "main"]
    return subprocess.Popen(
        [*args, "--output", str(output), *extra],
        env={**os.environ, **AWS_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_capture(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)  # fails on a truncated or corrupt file
    return [orjson.loads(line) for line in data.splitlines()]


def test_wire_record_restores_the_neptune_field_name() -> None:
    record = {"commitTimestampInMillis": 5, "eventId": {"commitNum": 1, "opNum": 1}, "data": {}, "op": "ADD"}
    assert list(wire_record(record)) == ["commitTimestamp", "eventId", "data", "op"]
    assert wire_record({"commitTimestamp": 5}) == {"commitTimestamp": 5}


def test_capture_until_caught_up_replays_to_the_reference(stand: NeptuneStand, history, tmp_path: Path) -> None:
    load_history(stand, history)
    output = tmp_path / "stream.jsonl.gz"
    started = time.monotonic()
    proc = capture(capture_config(tmp_path, stand), output, "--until-caught-up")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    elapsed = time.monotonic() - started
    captured = read_capture(output)
    assert captured == list(history.records())  # every record, in order, with the wire field names
    last = captured[-1]["eventId"]
    assert f"capture caught up: {history.n_records:,} records (last eventId commitNum {last['commitNum']}" in err
    assert "records/s" in err.splitlines()[1]  # the progress line
    print(f"captured {history.n_records} records in {elapsed:.2f} s")

    daemon = DaemonProcess(file_config(tmp_path, output))
    assert daemon.wait(120) == 0, daemon.log_tail()
    assert_converged(history.reference, replica(tmp_path / "data"))


def test_capture_max_records_writes_plain_json_lines(stand: NeptuneStand, history, tmp_path: Path) -> None:
    load_history(stand, history)
    output = tmp_path / "first.jsonl"
    proc = capture(
        capture_config(tmp_path, stand, start={"commit_num": 3, "op_num": 1}), output, "--max-records", "1234"
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    expected = [r for r in history.records() if r["eventId"]["commitNum"] >= 3][:1234]
    assert read_capture(output) == expected
    assert "capture reached --max-records: 1,234 records" in err

    daemon = DaemonProcess(file_config(tmp_path, output))
    assert daemon.wait(120) == 0, daemon.log_tail()
    assert_converged(ReferenceGraph(strict=False).apply_all(expected), replica(tmp_path / "data"))


def test_ctrl_c_leaves_a_complete_gzip_file(stand: NeptuneStand, history, tmp_path: Path) -> None:
    half = len(history.commits) // 2
    load_history(stand, history, slice(0, half))
    output = tmp_path / "live.jsonl.gz"

    def lines_so_far() -> int:  # each page is flushed, so what was written so far can be decompressed
        return zlib.decompressobj(31).decompress(output.read_bytes()).count(b"\n") if output.exists() else 0

    proc = capture(capture_config(tmp_path, stand), output)  # no stop condition: it waits at the head
    try:
        wait_for(lambda: lines_so_far() == sum(len(ops) for ops in history.commits[:half]), 60, "the first half")
        load_history(stand, history, slice(half, None))
        wait_for(lambda: lines_so_far() == history.n_records, 60, "the second half")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"capture interrupted: {history.n_records:,} records" in err
    assert read_capture(output) == list(history.records())
