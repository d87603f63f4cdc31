"""Event sinks (issue 16): events per second into a Kinesis stand-in (moto in server mode) and into a webhook
receiver, batched as the daemon sends them vs the naive poller of the Neptune Streams material (one call per
record, in order), side by side in one run; and the CPU the daemon spends per event beyond parsing the stream
(building the CloudEvent, encoding it and cutting keyed batches), measured against a sink that answers at once.

The receivers run on this machine: the numbers compare the two ways of calling, not AWS. The webhook receiver
runs in a child process, so the daemon side's CPU is its own.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from daemon.deadletter import DeadLetterFile
from daemon.events.cloudevents import Route, events_of
from daemon.events.sinks import Entry, EventDelivery, EventSink, KinesisSink, WebhookSink
from daemon.model import GraphChange
from daemon.sinks.base import ErrorClass, RetryPolicy
from tests.bench._common import frozen_inputs
from tests.bench.report import Section, Target
from tests.stand.moto_process import MotoProcess, aws_test_environment

COMMAND = "python -m tests.bench --only events"
TARGET_US = 10.0


def _changes(n: int) -> list[GraphChange]:
    """A property write per change over n/10 elements, one commit per 10 changes."""
    return [
        GraphChange(
            "vp",
            True,
            f"v{i % max(1, n // 10)}",
            "name",
            f"value {i}",
            position=(i // 10 + 1, i % 10 + 1),
            commit_ms=1764120000000 + i // 10,
        )
        for i in range(n)
    ]


class _Null(EventSink):
    name, kind = "null", "null"
    max_records, max_call_bytes, max_record_bytes = 500, 5 << 20, 1 << 20

    async def send(self, entries: list[Entry]) -> list[ErrorClass | None]:
        return [None] * len(entries)

    def classify(self, exc: BaseException) -> ErrorClass:
        return ErrorClass(False, "internal")


def _receiver(port: int, ready: Any) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _timed(sink: EventSink, events: list[dict[str, Any]], dead: DeadLetterFile) -> tuple[float, float]:
    """(events per second, CPU microseconds per event) of delivering `events` to `sink`."""
    delivery = EventDelivery(sink, source="bench", retry=RetryPolicy(0.01, 0.1, 4), dead_letters=dead)
    await sink.start()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        await delivery.deliver(events)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await sink.close()
    return len(events) / wall, cpu / len(events) * 1e6


async def _naive(send_one: Any, events: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    for event in events:
        await send_one(event)
    return len(events) / (time.perf_counter() - started)


async def _measure(quick: bool, tmp: Path) -> tuple[list[list[Any]], float]:
    n = 20_000 if quick else 100_000
    changes = _changes(n)
    with frozen_inputs():  # the inputs out of the collector's sight, its thresholds the daemon's
        cpu = time.process_time()
        events = events_of("bench", changes, Route())
        build_us = (time.process_time() - cpu) / n * 1e6
    dead = DeadLetterFile(tmp / "dead.jsonl")
    with frozen_inputs():
        _, null_us = await _timed(_Null(), events, dead)
    rows: list[list[Any]] = [
        ["CPU: build CloudEvents", f"{n:,}", "-", f"{build_us:.1f}"],
        ["CPU: encode + keyed batches (sink answers at once)", f"{n:,}", "-", f"{null_us:.1f}"],
    ]

    sample = events[: 2_000 if quick else 10_000]
    naive_sample = sample[: len(sample) // 5]
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    receiver = ctx.Process(target=_receiver, args=(port, ready), daemon=True)
    receiver.start()
    try:
        ready.wait(30)
        url = f"http://127.0.0.1:{port}/"
        hook = WebhookSink("hook", url=url, secret="k", events_per_request=100, max_request_bytes=1 << 20, timeout=30)
        rate, us = await _timed(hook, sample, dead)
        one = WebhookSink("hook1", url=url, secret="k", events_per_request=1, max_request_bytes=1 << 20, timeout=30)
        await one.start()
        try:
            naive = await _naive(lambda e: one.send([one.entry(e)]), naive_sample)
        finally:
            await one.close()
        rows.append(["webhook, 100 events a request", f"{len(sample):,}", f"{rate:,.0f}", f"{us:.1f}"])
        rows.append(["webhook, naive: one request per record", f"{len(naive_sample):,}", f"{naive:,.0f}", "-"])
    finally:
        receiver.kill()

    with aws_test_environment():
        moto = MotoProcess(tmp)
        try:
            moto.client("kinesis").create_stream(StreamName="bench", ShardCount=4)
            await asyncio.sleep(0.5)
            kinesis = KinesisSink("kinesis", stream="bench", region="us-east-1", endpoint=moto.url, profile=None,
                                  timeout=60)  # fmt: skip
            rate, us = await _timed(kinesis, sample, dead)
            await kinesis.start()
            try:
                client = kinesis.client

                async def put_one(event: dict[str, Any]) -> None:
                    entry = kinesis.entry(event)
                    await client.put_record(StreamName="bench", Data=entry.body, PartitionKey=entry.key)

                naive = await _naive(put_one, naive_sample)
            finally:
                await kinesis.close()
            rows.append(["Kinesis (moto), PutRecords batches", f"{len(sample):,}", f"{rate:,.0f}", f"{us:.1f}"])
            rows.append(["Kinesis (moto), naive: PutRecord per record", f"{len(naive_sample):,}", f"{naive:,.0f}", "-"])
            rows.extend(await _s3_rows(moto, changes, naive_sample, dead))
        finally:
            moto.stop()
    return rows, build_us + null_us


async def _s3_rows(
    moto: MotoProcess, changes: list[GraphChange], naive_sample: list[dict[str, Any]], dead: DeadLetterFile
) -> list[list[Any]]:
    """An `s3` sink's lane (windows of 1,000 events, gzip, PutObject into moto) vs one PutObject per record."""
    from daemon.events.archive import ArchiveLane, S3Sink
    from daemon.model import ChangeBatch

    moto.client("s3").create_bucket(Bucket="bench")
    sink = S3Sink("s3", source="bench", bucket="bench", prefix="", region="us-east-1", endpoint=moto.url,
                  profile=None, timeout=60, object_max_bytes=64 << 20)  # fmt: skip
    lane = ArchiveLane("bench", sink, Route(), object_max_events=1000, object_max_bytes=64 << 20, flush_seconds=0,
                       exit_when_idle=True, buffer_batches=8, window_max_events=1000,
                       retry=RetryPolicy(0.01, 0.1, 4), dead_letters=dead)  # fmt: skip
    done = asyncio.Event()

    class _Store:
        async def save_many(self, key: str, positions: dict[str, Any]) -> None:
            if positions.get("") == changes[-1].position:
                done.set()

    await sink.start()  # (the client's start is not per event)
    task = asyncio.create_task(lane.run(_Store(), lambda key, moved: None))
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(changes), 500):
            page = changes[start : start + 500]
            await lane.queue.put(ChangeBatch("", page, page[-1].position, caught_up=start + 500 >= len(changes)))
        await done.wait()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        client = sink.client

        async def put_one(event: dict[str, Any]) -> None:
            key = f"naive/{event['id']}.json"
            await client.put_object(Bucket="bench", Key=key, Body=sink.entry(event).body)

        naive = await _naive(put_one, naive_sample)
    finally:
        task.cancel()
        await sink.close()
    return [
        ["S3 (moto), gzip NDJSON objects of 1,000 events", f"{len(changes):,}", f"{len(changes) / wall:,.0f}",
         f"{cpu / len(changes) * 1e6:.1f}"],
        ["S3 (moto), naive: PutObject per record", f"{len(naive_sample):,}", f"{naive:,.0f}", "-"],
    ]  # fmt: skip


def run(quick: bool) -> Section:
    with TemporaryDirectory() as tmp:
        rows, cpu_us = asyncio.run(_measure(quick, Path(tmp)))
    return Section(
        key="events",
        title="11. Event sinks",
        command=COMMAND,
        columns=["what", "events", "events/s", "CPU us/event (daemon side)"],
        rows=rows,
        targets=[Target("<= 10 us per event beyond parsing", f"{cpu_us:.1f} us per event", cpu_us <= TARGET_US)],
        notes="Measured as in the daemon: the inputs frozen out of the collector's sight, its thresholds the "
        "daemon's (`frozen_inputs`). CPU beyond parsing = building the CloudEvent (`events_of`) plus encoding "
        "it and cutting keyed batches (`EventDelivery` against a sink that answers at once). The webhook and "
        "Kinesis rows include the client's HTTP work; the naive rows call once per record, in order, as the "
        "Lambda poller of the Neptune Streams material does. The S3 row runs an `s3` sink's lane (`ArchiveLane`: "
        "windows, gzip level 6, PutObject) from changes, so its CPU includes building the events.",
    )
