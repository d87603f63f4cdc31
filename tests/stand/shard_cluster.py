"""A many-shard DynamoDB stream shared by several daemon processes: the harness of the shard-lease tests
(`tests/test_shard_leases.py`) and benchmark (`tests/bench/shard_leases.py`).

Room in the design: the multi-process proof of issue 13's "DynamoDB source: shards shared across instances".
Pieces, all reachable over loopback by daemon subprocesses:

* `LoopThread`: an event loop in a background thread of the test process. The scripted stream and the proxies
  below are served from it, and every change to the script runs on it (`call`), so a daemon never sees a
  half-made shard.
* `ShardedStream`: a `ScriptedStreams` endpoint whose script grows while daemons read it. Users hash to one of
  `slots` hash slots; each open shard covers some slots, so an item's records stay in one lineage: a split
  closes the shard and gives each of two children half its slots (closed parents, children, grandchildren).
  Every record carries the item's version (1, 2, 3, ... in lineage order), so a child's record applied before
  its parent's last one leaves an old version behind. `reference()` is the graph the script builds. It also
  notes the wall time of each shard's first GetRecords, to compare with the time its parent's `SHARD_END` was
  checkpointed in the lease table.
* `CommandCounter`: a TCP proxy in front of the shared FalkorDB engine, one per instance, that parses the
  client's RESP commands and notes each with its arrival time: the writes (`GRAPH.QUERY`) a process sent after
  a given moment are counted exactly.
* `FaultyTable`: an HTTP proxy in front of moto for the lease table that answers a share of calls with
  throttling or a 500 (the JSON 1.0 error shape), or forwards a write and then loses the answer; it counts the
  calls by operation.
* `lease_items`: the lease table read directly with boto3; `owner_pid` maps an owner id to its process.
* `instance_config`: one instance's config: same stream, sink, lease table; its own data directory.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import falkordb
import orjson
from aiohttp import web

from tests.stand.comparator import diff_graphs, read_falkordb_graph
from tests.stand.daemon_process import AWS_ENV, DaemonProcess, toml_value
from tests.stand.scripted_streams import STREAM_ARN, ScriptedShard, ScriptedStreams
from tests.stand.workload import ReferenceGraph

T = TypeVar("T")
BASE = 10**29  # 30-digit sequence numbers, like the service's
SOURCE = "scripted"


class LoopThread:
    """An asyncio loop in a daemon thread; `run` a coroutine or `call` a function on it from any thread."""

    def __init__(self, name: str = "shard-cluster") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def _call() -> T:
            return fn(*args)

        return self.run(_call())

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


# ----------------------------------------------------------------------------------------- the stream


def shard_id(n: int, tag: str) -> str:
    """A shard id shaped like the service's (28 characters at least)."""
    return f"shardId-{n:020d}-{tag.lower():0>8}"


_PORT: contextvars.ContextVar[int] = contextvars.ContextVar("port", default=0)


class TimedStreams(ScriptedStreams):
    """`ScriptedStreams` that also notes the wall time of each shard's first GetRecords, and which port (one per
    instance, see `ShardedStream.add_site`) each GetRecords came to."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_read_at: dict[str, float] = {}
        self.reads: dict[str, list[tuple[float, int]]] = {}  # shard -> (monotonic time, port) per GetRecords
        self.records_served = 0

    async def _handle(self, request: web.Request) -> web.Response:
        _PORT.set(request.transport.get_extra_info("sockname")[1] if request.transport else 0)
        return await super()._handle(request)

    def _op_GetRecords(self, body: dict[str, Any]) -> dict[str, Any]:
        out = super()._op_GetRecords(body)
        shard = body["ShardIterator"].partition("|")[0]
        self.first_read_at.setdefault(shard, time.time())
        self.reads.setdefault(shard, []).append((time.monotonic(), _PORT.get()))
        self.records_served += len(out["Records"])
        return out

    def most_readers(self, within: float = 1.0) -> tuple[int, str | None]:
        """The most instances (ports) that read one shard within `within` seconds of each other, and the shard."""
        best, where = 0, None
        for shard, reads in list(self.reads.items()):
            reads = sorted(reads)
            for i, (t, _) in enumerate(reads):
                ports = {port for u, port in reads[i:] if u - t <= within}
                if len(ports) > best:
                    best, where = len(ports), shard
        return best, where


class ShardedStream:
    """A scripted stream with `roots` open root shards over `slots` hash slots, served from `loop`. Change it
    only through `feed`, `split` and `append_prepared` (they run on the loop thread)."""

    def __init__(
        self,
        loop: LoopThread,
        *,
        roots: int = 8,
        slots: int = 32,
        users: int = 256,
        seed: int = 0,
        remove_rate: float = 0.04,
    ) -> None:
        self.loop = loop
        self.rng = random.Random(seed)
        self.users = [f"u{i}" for i in range(users)]
        self.slot_count = slots
        self.remove_rate = remove_rate
        self.streams = TimedStreams([], seed=seed, describe_page_size=25)
        self.sequence = BASE
        self.images: dict[str, dict[str, Any]] = {}  # the item now, per user (absent: deleted)
        self.versions: Counter[str] = Counter()  # the last version written per user (never reset by a delete)
        self.cover: dict[int, str] = {}  # slot -> the open shard that takes its records
        self.slots_of: dict[str, list[int]] = {}  # open shard -> its slots
        self._next_shard = 0
        per_root = slots // roots
        for r in range(roots):
            shard = self._add_shard(None, f"R{r}")
            self._assign(shard.id, list(range(r * per_root, (r + 1) * per_root)))
        self._runner: web.AppRunner | None = None
        self._runner, self.url = loop.run(serve_app(self.streams.app))

    def add_site(self) -> str:
        """Another port serving the same stream (one per instance, so reads can be told apart): its URL."""

        async def _site() -> str:
            assert self._runner is not None
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return f"http://127.0.0.1:{site.port}"

        return self.loop.run(_site())

    def close(self) -> None:
        if self._runner is not None:
            self.loop.run(self._runner.cleanup())
            self._runner = None

    # -- the script (call through the loop thread: `feed`, `split`) ----------------------------------

    def _add_shard(self, parent: str | None, tag: str) -> ScriptedShard:
        shard = ScriptedShard(shard_id(self._next_shard, tag), parent=parent)
        self._next_shard += 1
        self.streams.shards[shard.id] = shard
        self.streams.order.append(shard.id)
        return shard

    def _assign(self, shard: str, slots: list[int]) -> None:
        self.slots_of[shard] = slots
        for slot in slots:
            self.cover[slot] = shard

    def _slot(self, user: str) -> int:
        return int(user[1:]) % self.slot_count

    def _record(self, user: str) -> tuple[str, dict[str, Any]]:
        """The next record of `user` (a put, or a delete now and then) and the shard it goes to."""
        shard = self.cover[self._slot(user)]
        keys = {"PK": {"S": f"USER#{user}"}, "SK": {"S": "PROFILE"}}
        old = self.images.get(user)
        self.sequence += 7
        if old is not None and self.rng.random() < self.remove_rate:
            del self.images[user]
            return shard, ScriptedStreams.record(self.sequence, "REMOVE", keys, None, old)
        self.versions[user] += 1
        new = {**keys, "version": {"N": str(self.versions[user])}, "shard": {"S": shard}}
        self.images[user] = new
        return shard, ScriptedStreams.record(self.sequence, "MODIFY" if old else "INSERT", keys, new, old)

    def _feed(self, n: int, users: list[str] | None) -> None:
        for _ in range(n):
            shard, record = self._record(self.rng.choice(users or self.users))
            self.streams.shards[shard].records.append(record)

    def _split(self, shard: str | None) -> tuple[str, str]:
        if shard is None:
            splittable = sorted(s for s, slots in self.slots_of.items() if len(slots) > 1)
            shard = self.rng.choice(splittable)
        slots = self.slots_of.pop(shard)
        assert len(slots) > 1, f"{shard} covers one slot; it cannot split"
        self.streams.shards[shard].closed = True
        half = len(slots) // 2
        children = []
        for part in (slots[:half], slots[half:]):
            child = self._add_shard(shard, "C")
            self._assign(child.id, part)
            children.append(child.id)
        return children[0], children[1]

    def feed(self, n: int, users: list[str] | None = None) -> None:
        """Append `n` records (puts, some deletes) to the open shards, by the users' slots."""
        self.loop.call(self._feed, n, users)

    def split(self, shard: str | None = None) -> tuple[str, str]:
        """Close `shard` (default: a random open one covering two slots or more) and open its two children."""
        return self.loop.call(self._split, shard)

    def prepare(self, n: int) -> dict[str, list[dict[str, Any]]]:
        """`n` records per open shard's users, made now but not yet in the stream (see `append_prepared`): a
        benchmark releases a large batch at once. Call only while nothing else changes the script."""
        out: dict[str, list[dict[str, Any]]] = {}
        for _ in range(n):
            shard, record = self._record(self.rng.choice(self.users))
            out.setdefault(shard, []).append(record)
        return out

    def append_prepared(self, prepared: dict[str, list[dict[str, Any]]]) -> None:
        def _append() -> None:
            for shard, records in prepared.items():
                self.streams.shards[shard].records.extend(records)

        self.loop.call(_append)

    # -- views -------------------------------------------------------------------------------------

    @property
    def shards(self) -> dict[str, ScriptedShard]:
        return self.streams.shards

    def open_shards(self) -> list[str]:
        return self.loop.call(lambda: sorted(self.slots_of))

    def last_positions(self) -> dict[str, str]:
        """Each shard's expected final checkpoint: `SHARD_END` when closed, else its last sequence number (zero
        padded like the daemon's positions); shards without records are left out."""

        def _positions() -> dict[str, str]:
            out = {}
            for sid, shard in self.streams.shards.items():
                if shard.closed:
                    out[sid] = "SHARD_END"
                elif shard.records:
                    out[sid] = shard.records[-1]["dynamodb"]["SequenceNumber"].zfill(40)
            return out

        return self.loop.call(_positions)

    def reference(self) -> ReferenceGraph:
        def _reference() -> ReferenceGraph:
            expected = ReferenceGraph(strict=False)
            for user, image in self.images.items():
                props = {"version": int(image["version"]["N"]), "shard": image["shard"]["S"]}
                expected.add_vertex(f"user:{user}", frozenset({"User"}), props)
            return expected

        return self.loop.call(_reference)

    def lineage_sensitive_items(self) -> int:
        """How many items have records in a closed shard and later ones in a descendant: the items whose final
        value would be an old one if a child were applied before its parent's end."""

        def _count() -> int:
            last_in: dict[str, str] = {}
            sensitive = set()
            for sid in self.streams.order:
                shard = self.streams.shards[sid]
                for record in shard.records:
                    user = record["dynamodb"]["Keys"]["PK"]["S"][5:]
                    if shard.parent is not None and last_in.get(user) not in (None, sid):
                        sensitive.add(user)
                    last_in[user] = sid
            return len(sensitive)

        return self.loop.call(_count)


class Feeder:
    """Appends `per_tick` records every `interval` seconds from a thread, until stopped."""

    def __init__(self, stream: ShardedStream, per_tick: int = 10, interval: float = 0.1) -> None:
        self.stream, self.per_tick, self.interval = stream, per_tick, interval
        self.fed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.stream.feed(self.per_tick)
            self.fed += self.per_tick

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# ------------------------------------------------------------------------------------- engine proxy


def _parse_command(buf: bytearray) -> tuple[list[bytes] | None, int]:
    """One RESP command from the front of `buf`: (parts, bytes used), or (None, 0) when incomplete."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None, 0
    if buf[:1] != b"*":  # an inline command
        return bytes(buf[:end]).split(), end + 2
    count, pos, parts = int(buf[1:end]), end + 2, []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None, 0
        length = int(buf[pos + 1 : end])
        start = end + 2
        if len(buf) < start + length + 2:
            return None, 0
        parts.append(bytes(buf[start : start + length]))
        pos = start + length + 2
    return parts, pos


@dataclass
class CommandCounter:
    """A TCP proxy to `upstream` (host, port) that notes every command its clients send, with its arrival time
    (`time.monotonic()`); started with `start` on a `LoopThread`."""

    upstream: tuple[str, int]
    keep_text: bool = False
    commands: list[tuple[float, str, bytes]] = field(default_factory=list)  # (time, NAME, query text if kept)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> CommandCounter:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def writes(self, since: float = 0.0) -> list[float]:
        """Arrival times of the `GRAPH.QUERY` commands (the sink's writes) at or after `since`."""
        return [t for t, name, _ in list(self.commands) if name == "GRAPH.QUERY" and t >= since]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, parse=True), self._pipe(up_reader, writer, parse=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, parse: bool) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(65536):
                if parse:
                    now = time.monotonic()
                    buf += data
                    while True:
                        parts, used = _parse_command(buf)
                        if parts is None:
                            break
                        del buf[:used]
                        name = parts[0].decode(errors="replace").upper() if parts else ""
                        text = parts[2] if self.keep_text and len(parts) > 2 else b""
                        self.commands.append((now, name, text))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


# ------------------------------------------------------------------------------------ lease table proxy


_DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"
FAULT_KINDS = ("throttle", "server_error", "lost_answer")


@dataclass
class FaultyTable:
    """An HTTP proxy to moto (`upstream` URL) for the lease table. A share `rate` of calls fails, by a kind
    from `kinds`: `throttle` (400 ProvisionedThroughputExceededException), `server_error` (500
    InternalServerError), `lost_answer` (the call reaches moto, then the answer is a 500: a write that landed
    although the caller saw it fail). `calls` counts by (operation, outcome)."""

    upstream: str
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    bodies: list[tuple[str, bytes]] | None = None  # (operation, request body) when kept
    # (time answered, operation, body, status, answer, seconds moto took) when kept
    trace: list[tuple[float, str, bytes, int, bytes, float]] | None = None
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> FaultyTable:
        self._rng = random.Random(self.seed)
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.url = await serve_app(app)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2] or request.path
        body = await request.read()
        if self.bodies is not None:
            self.bodies.append((operation, body))
        fault = self._rng.choice(self.kinds) if self._rng.random() < self.rate else None
        if fault == "throttle":
            self.calls[(operation, fault)] += 1
            return _table_error(
                400,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded.",
            )
        if fault == "server_error":
            self.calls[(operation, fault)] += 1
            return _table_error(500, "InternalServerError", "Internal server error")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        assert self._session is not None
        sent = time.monotonic()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as response:
            answer = await response.read()
            status, content_type = response.status, response.headers.get("Content-Type", "application/x-amz-json-1.0")
        if self.trace is not None:
            self.trace.append((time.time(), operation, body, status, answer, time.monotonic() - sent))
        if fault == "lost_answer":
            self.calls[(operation, fault)] += 1
            return _table_error(500, "InternalServerError", "Internal server error")
        self.calls[(operation, "ok" if status < 400 else f"http_{status}")] += 1
        return web.Response(status=status, body=answer, headers={"Content-Type": content_type})

    def faults(self) -> int:
        return sum(n for (_, outcome), n in self.calls.items() if outcome in FAULT_KINDS)


def _table_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"__type": _DYNAMODB_ERROR + code, "message": message}),
        content_type="application/x-amz-json-1.0",
    )


# ------------------------------------------------------------------------------------ lease table reads


@dataclass(frozen=True, slots=True)
class LeaseItem:
    partition: str
    owner: str | None
    counter: int
    checkpoint: str | None  # the position's first element ("SHARD_END" or the padded sequence number)
    parents: tuple[str, ...]
    updated_at: float | None
    pending_owner: str | None

    @property
    def ended(self) -> bool:
        return self.checkpoint == "SHARD_END"


def lease_items(client: Any, table: str, source: str = SOURCE) -> dict[str, LeaseItem]:
    """Every lease item of `source` (a boto3 dynamodb client), by partition, read consistently."""
    items: dict[str, LeaseItem] = {}
    kwargs: dict[str, Any] = {}
    while True:
        page = client.query(
            TableName=table,
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "source"},
            ExpressionAttributeValues={":s": {"S": source}},
            ConsistentRead=True,
            **kwargs,
        )
        for item in page.get("Items", []):
            checkpoint = item.get("checkpoint", {}).get("S")
            updated = item.get("updated_at", {}).get("N")
            lease = LeaseItem(
                partition=item["partition"]["S"],
                owner=item.get("owner", {}).get("S"),
                counter=int(item.get("lease_counter", {}).get("N", "0")),
                checkpoint=orjson.loads(checkpoint)[0] if checkpoint else None,
                parents=tuple(p["S"] for p in item.get("parents", {}).get("L", [])),
                updated_at=float(updated) if updated else None,
                pending_owner=item.get("pending_owner", {}).get("S"),
            )
            items[lease.partition] = lease
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def owner_pid(owner: str | None) -> int | None:
    """The process id in an owner id (`host:pid:random`)."""
    if not owner:
        return None
    return int(owner.rsplit(":", 2)[1])


# -------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    lease_duration: float = 3.0
    renew_interval: float = 0.5
    take_interval: float = 0.2
    margin: float = 0.5
    max_steal: int = 1
    steal_tolerance: int = 1


def instance_config(
    path: Path,
    *,
    data_dir: Path,
    streams_url: str,
    engine_url: str,
    engine_password: str,
    graph: str,
    table: str | None,
    table_endpoint: str | None,
    timings: LeaseTimings = LeaseTimings(),
    source: dict[str, Any] | None = None,
    sink: dict[str, Any] | None = None,
) -> Path:
    """One instance's config: the scripted stream, the shared engine (through this instance's proxy), the lease
    table; only `data_dir` (and the proxy addresses) differ between instances, as on separate hosts. With
    `table` None: the SQLite store (one instance)."""
    source_settings = {
        "name": SOURCE,
        "kind": "dynamodb",
        "sink": "graph",
        "stream_arn": STREAM_ARN,
        "key": ["PK", "SK"],
        "region": AWS_ENV["AWS_DEFAULT_REGION"],
        "endpoint": streams_url,
        "limit": 50,
        "poll_interval_seconds": 0.1,
        "min_get_records_interval_seconds": 0.0,
        "discovery_interval_seconds": 0.5,
        **(source or {}),
    }
    sink_settings = {
        "kind": "falkordb",
        "url": engine_url,
        "password": engine_password,
        "graph": graph,
        "batch_size": 50,
        "retry_initial_seconds": 0.02,
        "retry_max_seconds": 0.5,
        **(sink or {}),
    }
    checkpoint = {
        "kind": "dynamodb",
        "table": table,
        "region": AWS_ENV["AWS_DEFAULT_REGION"],
        "endpoint": table_endpoint,
        "lease_duration_seconds": timings.lease_duration,
        "renew_interval_seconds": timings.renew_interval,
        "take_interval_seconds": timings.take_interval,
        "fencing_margin_seconds": timings.margin,
        "max_steal": timings.max_steal,
        "steal_tolerance": timings.steal_tolerance,
    }
    daemon = {
        "data_dir": str(data_dir),
        "http_address": "127.0.0.1:0",
        "log_format": "json",
        "restart_backoff_max_seconds": 0.2,
    }

    def table_lines(settings: dict[str, Any]) -> list[str]:
        out = []
        for key, value in settings.items():
            if isinstance(value, list):
                out.append(f"{key} = [{', '.join(toml_value(v) for v in value)}]")
            else:
                out.append(f"{key} = {toml_value(value)}")
        return out

    lines = ["[daemon]", *table_lines(daemon), "", "[[sources]]", *table_lines(source_settings)]
    lines += [
        "",
        "[[sources.rules]]",
        'name = "user"',
        'when = { PK = { begins_with = "USER#" }, SK = { equals = "PROFILE" } }',
        'vertex = { label = "User", id = "user:{PK[1]}" }',
        "",
        "[sinks.graph]",
        *table_lines(sink_settings),
    ]
    if table is not None:
        lines += ["", "[checkpoint]", *table_lines(checkpoint)]
    path.write_text("\n".join(lines) + "\n")
    return path


# -------------------------------------------------------------------------------------------- cluster


class Cluster:
    """`n` daemon instances on one config (their own data directories) against `stream`, the shared engine
    (each through its own `CommandCounter`) and one lease table in moto (through one `FaultyTable`)."""

    def __init__(
        self,
        tmp_path: Path,
        loop: LoopThread,
        stream: ShardedStream,
        engine: tuple[str, int, str],
        moto_url: str,
        *,
        n: int = 3,
        graph: str = "replica",
        timings: LeaseTimings = LeaseTimings(),
        instance_timings: dict[int, LeaseTimings] | None = None,
        fault_rate: float = 0.0,
        keep_table_bodies: bool = False,
        count_writes: bool = False,
        source: dict[str, Any] | None = None,
        sink: dict[str, Any] | None = None,
    ) -> None:
        import boto3

        tmp_path.mkdir(parents=True, exist_ok=True)
        self.loop, self.stream, self.graph = loop, stream, graph
        self.host, self.port, self.password = engine
        self.table = f"leases-{uuid.uuid4().hex[:8]}"
        self.timings = timings
        self.dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=moto_url,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        # The proxies run in this (test) process: only where a test needs them, so that elsewhere a busy test
        # process never stands between the instances and the lease table or the engine.
        self.table_proxy: FaultyTable | None = None
        if fault_rate or keep_table_bodies:
            self.table_proxy = loop.run(FaultyTable(moto_url, rate=fault_rate).start())
            if keep_table_bodies:
                self.table_proxy.bodies = []
        self.counters = [
            loop.run(CommandCounter((self.host, self.port)).start()) for _ in range(n if count_writes else 0)
        ]
        engine_direct = f"redis://{self.host}:{self.port}"
        self.configs = [
            instance_config(
                tmp_path / f"instance-{i}.toml",
                data_dir=tmp_path / f"data-{i}",
                streams_url=stream.add_site(),
                engine_url=self.counters[i].url if self.counters else engine_direct,
                engine_password=self.password,
                graph=graph,
                table=self.table,
                table_endpoint=self.table_proxy.url if self.table_proxy else moto_url,
                timings=(instance_timings or {}).get(i, timings),
                source=source,
                sink=sink,
            )
            for i in range(n)
        ]
        self.daemons: list[DaemonProcess | None] = [None] * n
        self.pids: dict[int, int] = {}  # pid -> instance index, over every start

    def start(self, i: int) -> DaemonProcess:
        daemon = DaemonProcess(self.configs[i], exit_when_idle=False)
        self.daemons[i] = daemon
        self.pids[daemon.proc.pid] = i
        return daemon

    def start_all(self) -> None:
        for i in range(len(self.configs)):
            self.start(i)

    def alive(self, i: int) -> bool:
        daemon = self.daemons[i]
        return daemon is not None and daemon.proc.poll() is None

    # -- the lease table ---------------------------------------------------------------------------

    def leases(self) -> dict[str, LeaseItem]:
        """The lease table now (empty until an instance created it)."""
        try:
            return lease_items(self.dynamodb, self.table)
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return {}

    def instance_of(self, owner: str | None) -> int | None:
        pid = owner_pid(owner)
        return self.pids.get(pid) if pid is not None else None

    def owners(self, leases: dict[str, LeaseItem] | None = None) -> dict[str, int | None]:
        """Instance index owning each unfinished lease (None: free)."""
        leases = self.leases() if leases is None else leases
        return {p: self.instance_of(lease.owner) for p, lease in leases.items() if not lease.ended}

    def held_counts(self, leases: dict[str, LeaseItem] | None = None) -> Counter[int | None]:
        return Counter(self.owners(leases).values())

    def balanced(self, live: list[int]) -> bool:
        """Every unfinished lease of an open shard is held by a live instance, their counts within one."""
        owners = self.owners()
        open_shards = set(self.stream.open_shards())
        held = Counter(owners.get(s) for s in open_shards)
        if set(held) - set(live) or not open_shards <= set(owners):
            return False
        counts = [held.get(i, 0) for i in live]
        return max(counts) - min(counts) <= 1

    # -- the replica -------------------------------------------------------------------------------

    def replica(self) -> ReferenceGraph:
        graph = falkordb.FalkorDB(host=self.host, port=self.port, password=self.password).select_graph(self.graph)
        return read_falkordb_graph(graph, allow_unlabelled=True)

    def differences(self) -> list[str]:
        return diff_graphs(self.stream.reference(), self.replica(), limit=10)

    def wait_converged(self, timeout: float) -> float:
        """Poll the replica until it equals the script's graph; returns the seconds it took."""
        started = time.monotonic()
        while True:
            differences = self.differences()
            if not differences:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"replica not converged after {timeout} s:\n  " + "\n  ".join(differences) + "\n" + self.tails()
                )
            self.check_exits()
            time.sleep(0.3)

    def check_exits(self) -> None:
        """Fail at once when an instance exited on its own (not killed, not drained)."""
        for i, daemon in enumerate(self.daemons):
            if daemon is not None and daemon.proc.poll() not in (None, -signal.SIGKILL, 0):
                raise AssertionError(f"instance {i} exited with {daemon.proc.returncode}:\n{daemon.log_tail()}")

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> float:
        """Poll `predicate` until true (failing early when an instance died); returns the seconds it took."""
        started = time.monotonic()
        while not (self.check_exits() or predicate()):
            if time.monotonic() - started > timeout:
                table = self.lease_table_text()
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{table}\n{self.tails()}")
            time.sleep(interval)
        return time.monotonic() - started

    def lease_table_text(self) -> str:
        """The lease table as the failure message shows it: who holds what, who asked for what."""
        try:
            leases = self.leases()
        except Exception as exc:  # the table itself may be what failed
            return f"(lease table unreadable: {exc!r})"
        open_shards = set(self.stream.open_shards())
        return "\n".join(
            f"{p}: owner {self.instance_of(lease.owner)} counter {lease.counter} pending "
            f"{self.instance_of(lease.pending_owner) if lease.pending_owner else None} at {lease.checkpoint} "
            f"{'open' if p in open_shards else 'closed'} parents {list(lease.parents)}"
            for p, lease in sorted(leases.items())
        )

    def tails(self, n: int = 15) -> str:
        return "\n".join(
            f"--- instance {i} ---\n{daemon.log_tail(n)}" for i, daemon in enumerate(self.daemons) if daemon
        )

    # -- ending ------------------------------------------------------------------------------------

    def terminate(self, i: int, timeout: float = 30) -> int:
        daemon = self.daemons[i]
        assert daemon is not None
        daemon.terminate()
        return daemon.wait(timeout)

    def stop_all(self, timeout: float = 30) -> dict[int, int]:
        """SIGTERM every live instance at once; their exit codes."""
        live = [i for i in range(len(self.daemons)) if self.alive(i)]
        for i in live:
            self.daemons[i].terminate()  # type: ignore[union-attr]
        return {i: self.daemons[i].wait(timeout) for i in live}  # type: ignore[union-attr]

    def close(self) -> None:
        """Kill what still runs (a failed test), stop the proxies."""
        for daemon in self.daemons:
            if daemon is not None and daemon.proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.kill(daemon.proc.pid, signal.SIGCONT)
                daemon.kill()
        for counter in self.counters:
            self.loop.run(counter.close())
        if self.table_proxy is not None:
            self.loop.run(self.table_proxy.close())
