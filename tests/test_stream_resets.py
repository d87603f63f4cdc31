"""A Neptune stream reset behind the checkpoint (a cluster restored from a snapshot or re-created) is a loud stop,
not "caught up": the stream reader against the stand, then the real daemon process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from daemon.aws import open_client
from daemon.model import Position
from daemon.sources.stream_reader import Page, StreamReader, StreamReset
from tests.stand.daemon_process import AWS_ENV, DaemonProcess
from tests.stand.harness import config_for, metric_value, status, wait_for
from tests.stand.neptune_endpoint import NeptuneStand

EXIT_SOURCE_FAILED = 3


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    yield


def _label(vertex_id: str, label: str = "L") -> dict[str, Any]:
    return {"op": "ADD", "data": {"id": vertex_id, "type": "vl", "key": "label", "value": {"value": label}}}


def _commits(stand: NeptuneStand, n: int, prefix: str = "v") -> None:
    for i in range(n):
        stand.stream.append_commit([_label(f"{prefix}{i}"), _label(f"{prefix}{i}", "M")])


async def _first_pages(stand: NeptuneStand, resume: Position, n: int = 2) -> list[Page]:
    async with AsyncExitStack() as stack:
        client = await open_client(stack, "neptunedata", endpoint=stand.url, region="us-east-1")
        reader = StreamReader(client, resume=resume, idle_min=0.01, idle_max=0.01)
        pages: list[Page] = []
        async for page in reader.pages():
            pages.append(page)
            if len(pages) == n:
                return pages
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------ the reader


async def test_a_head_equal_to_the_checkpoint_is_caught_up(stand: NeptuneStand) -> None:
    _commits(stand, 3)  # head (3, 2)
    pages = await _first_pages(stand, (3, 2))
    assert all(p.caught_up and p.after == (3, 2) and not p.records for p in pages)


async def test_a_head_behind_the_checkpoint_is_a_reset(stand: NeptuneStand) -> None:
    _commits(stand, 3)  # a re-created cluster's stream: head (3, 2), the checkpoint was taken at (7, 1)
    with pytest.raises(StreamReset) as raised:
        await _first_pages(stand, (7, 1))
    assert (raised.value.head, raised.value.after) == ((3, 2), (7, 1))
    message = str(raised.value)
    assert "commitNum 3, opNum 2" in message and "commitNum 7, opNum 1" in message
    assert "Bootstrap the target again" in message and "rewind the checkpoint" in message


async def test_a_head_behind_within_one_commit_is_a_reset(stand: NeptuneStand) -> None:
    _commits(stand, 3)
    with pytest.raises(StreamReset):
        await _first_pages(stand, (3, 5))


async def test_an_empty_stream_after_a_checkpoint_is_a_reset(stand: NeptuneStand) -> None:
    with pytest.raises(StreamReset) as raised:
        await _first_pages(stand, (2, 1))
    assert raised.value.head == (0, 0) and "the stream is empty" in str(raised.value)


async def test_an_empty_stream_after_nothing_read_is_caught_up(stand: NeptuneStand) -> None:
    pages = await _first_pages(stand, (0, 0))  # a source started on an empty stream checkpoints (0, 0)
    assert all(p.caught_up for p in pages)


async def test_a_reset_while_following_the_stream_stops_the_reader(stand: NeptuneStand) -> None:
    _commits(stand, 4)
    async with AsyncExitStack() as stack:
        client = await open_client(stack, "neptunedata", endpoint=stand.url, region="us-east-1")
        reader = StreamReader(client, idle_min=0.01, idle_max=0.01)
        seen: list[Page] = []
        with pytest.raises(StreamReset) as raised:
            async for page in reader.pages():
                seen.append(page)
                if len(seen) == 10:
                    break  # idled as "caught up"
                if page.caught_up and len(seen) == 2:
                    stand.stream.clear()  # the cluster is re-created under the running reader
                    _commits(stand, 1, prefix="w")
    assert seen[0].after == (4, 2) and raised.value.head == (1, 2) and raised.value.after == (4, 2)


# ------------------------------------------------------------------------------------------ the daemon


@pytest.mark.slow
def test_the_daemon_stops_loudly_on_a_stream_reset(stand: NeptuneStand, tmp_path: Path) -> None:
    _commits(stand, 20)
    config = config_for(tmp_path, stand, "neptune", source={"limit": 7, "poll_interval_max_seconds": 0.05})
    first = DaemonProcess(config)
    assert first.wait(60) == 0, first.log_tail()
    again = DaemonProcess(config)  # the head equals the checkpoint: caught up, exit 0
    assert again.wait(60) == 0, again.log_tail()

    stand.stream.clear()  # the cluster is restored from an older snapshot: a shorter stream
    _commits(stand, 5, prefix="w")
    running = DaemonProcess(config, exit_when_idle=False)
    try:
        source = wait_for(
            lambda: next((s for s in status(running)["sources"] if s["state"] == "reset" and s["error"]), None),
            30,
            "a reset",
        )
        assert "commitNum 5, opNum 2" in source["error"] and "commitNum 20, opNum 2" in source["error"]
        code, body = running.get("/readyz")
        assert code == 503 and b"source main: reset" in body
        _, metrics = running.get("/metrics")
        assert metric_value(metrics.decode(), "graph_replicator_stream_reset", source="main") == 1
        assert metric_value(metrics.decode(), "graph_replicator_stream_expired", source="main") == 0
        assert status(running)["sources"][0]["position"] == [20, 2]  # the checkpoint is not moved
    finally:
        running.terminate()
    assert running.wait(30) == EXIT_SOURCE_FAILED, running.log_tail()  # a stopped source: 3 even on SIGTERM

    stopped = DaemonProcess(config)
    assert stopped.wait(60) == EXIT_SOURCE_FAILED, stopped.log_tail()
    stops = [line for line in stopped.log_lines() if line.get("event") == "source stopped: stream reset"]
    assert stops and "Bootstrap the target again" in stops[0]["error"], stopped.log_tail()

    stand.stream.clear()  # re-created and empty
    empty = DaemonProcess(config)
    assert empty.wait(60) == EXIT_SOURCE_FAILED, empty.log_tail()
