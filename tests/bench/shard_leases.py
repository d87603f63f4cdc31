"""DynamoDB shards shared by several instances (issue 13, "Performance"): throughput with 1 and 2 instances,
the cost of the lease table per change, and the failover time.

Everything is real but the stream: daemon processes (`python -m daemon run`) read a scripted DynamoDB Streams
endpoint with many open shards (`tests/stand/shard_cluster.py`, served from a thread of this process), write
one FalkorDB engine, and keep leases and checkpoints in a table in moto (server mode), reached through a
counting proxy.

* **Throughput**: 1 instance, then 2, on a fresh stream of `SHARDS` open shards each: once the instances
  share the shards evenly, N records are put in the shards at once; the time is from then until every shard's
  checkpoint in the table is at its last record. The two runs are side by side in one run of this command.
* **Lease table cost**: the calls the instances made to the table during the throughput run, by kind, times
  the client CPU one call costs (measured here against the same moto: aiobotocore's signing, serialising and
  parsing; moto's own CPU is not the daemon's), against the instances' whole CPU (psutil) over the run.
* **Failover**: 2 instances with records flowing; SIGKILL the one holding the most shards; the time until the
  first of its shards shows a new owner and a checkpoint past the one it had at the kill (a batch read,
  applied and checkpointed by the new owner). Several kills (the killed instance is restarted in between).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson
import psutil

from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore
from daemon.engine import start_engine_in_thread
from tests.bench.report import Section, Target
from tests.stand.moto_process import MotoProcess, aws_test_environment
from tests.stand.shard_cluster import Cluster, Feeder, LeaseTimings, LoopThread, ShardedStream

COMMAND = "python -m tests.bench --only shard_leases"
LEASE_COST_TARGET = 0.02  # of the pipeline's CPU
# Throughput runs: takes every 0.5 s so the instances settle on an even share quickly; renewals near the defaults
# (a 6 s lease renewed every second missed its deadlines on a saturated 2-core machine: see the notes).
FAST = LeaseTimings(lease_duration=12.0, renew_interval=2.0, take_interval=0.5, margin=3.0)
QUICK_FAILOVER = LeaseTimings(lease_duration=3.0, renew_interval=0.5, take_interval=0.2, margin=0.5)
DEFAULTS = LeaseTimings(lease_duration=15.0, renew_interval=3.0, take_interval=5.0, margin=3.0)
SOURCE = {"limit": 1000, "poll_interval_seconds": 0.1}
SINK = {"batch_size": 500}


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _kind(operation: str, body: bytes) -> str:
    """A lease-table call by what it does for the daemon."""
    if operation == "UpdateItem":
        update = orjson.loads(body).get("UpdateExpression", "")
        return "checkpoint write" if "#cp" in update else "take / renew / release / steal"
    if operation == "Query":
        return "list (take round, load)"
    return "other (create, describe, register, get)"


async def _unit_costs(endpoint: str, shards: int) -> dict[str, float]:
    """Client CPU seconds of one UpdateItem and of one Query of `shards` items, on this process's own loop."""
    async with AsyncExitStack() as stack:
        store = await DynamoDBCheckpointStore.open(stack, table="unit-cost", region="us-east-1", endpoint=endpoint)
        await store.ensure_leases("unit", {f"s{i}": () for i in range(shards)})
        lease = await store.take("unit", "s0", "bench:1:00", 0)
        for _ in range(5):
            await store.renew(lease)  # warm the client
        n = 60
        started = time.process_time()
        for _ in range(n):
            await store.renew(lease)
        update = (time.process_time() - started) / n
        started = time.process_time()
        for _ in range(n // 2):
            await store.list_leases("unit")
        query = (time.process_time() - started) / (n // 2)
    return {"update": update, "query": query}


def _throughput(
    workdir: Path,
    loop: LoopThread,
    engine: tuple[str, int, str],
    moto: str,
    instances: int,
    shards: int,
    n: int,
    others: dict[str, int],
) -> dict[str, Any]:
    """One throughput run; `others` are the shared processes (engine, moto) whose CPU is noted too."""
    stream = ShardedStream(loop, roots=shards, slots=shards, users=shards * 64, seed=instances, remove_rate=0.0)
    cluster = Cluster(
        workdir / f"tp-{instances}",
        loop,
        stream,
        engine,
        moto,
        n=instances,
        graph=f"throughput-{instances}",
        timings=FAST,
        keep_table_bodies=True,
        source=SOURCE,
        sink=SINK,
    )
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.balanced(list(range(instances))), 120, "an even share of the shards")
        time.sleep(1.0)  # every instance's readers are polling their shards
        prepared = stream.prepare(n)
        pids = [d.proc.pid for d in cluster.daemons if d is not None]
        assert cluster.table_proxy is not None
        bodies = cluster.table_proxy.bodies
        assert bodies is not None
        first_call = len(bodies)
        others_before = {name: _cpu([pid]) for name, pid in others.items()}
        here_before = time.process_time()
        cpu_before, started = _cpu(pids), time.monotonic()
        stream.append_prepared(prepared)
        expected = stream.last_positions()

        def done() -> bool:
            leases = cluster.leases()
            return all(leases[p].checkpoint == want for p, want in expected.items() if p in leases)

        cluster.wait_for(done, 600, "every shard checkpointed at its last record", interval=0.1)
        seconds = time.monotonic() - started
        cpu = _cpu(pids) - cpu_before
        shared_cpu = {name: _cpu([pid]) - others_before[name] for name, pid in others.items()}
        shared_cpu["stream (this process)"] = time.process_time() - here_before
        calls: dict[str, int] = {}
        for operation, body in bodies[first_call:]:
            kind = _kind(operation, body)
            calls[kind] = calls.get(kind, 0) + 1
        held = cluster.held_counts()
        cluster.stop_all()
        given_up = sum(
            1
            for daemon in cluster.daemons
            if daemon is not None
            for line in daemon.log_lines()
            if line.get("event") == "write deadline passed; shard given up"
        )
        return {
            "seconds": seconds,
            "cpu": cpu,
            "calls": calls,
            "held": sorted(held.values()),
            "n": n,
            "given_up": given_up,
            "shared_cpu": shared_cpu,
        }
    finally:
        cluster.close()
        stream.close()


def _failover(
    workdir: Path, loop: LoopThread, engine: tuple[str, int, str], moto: str, timings: LeaseTimings, kills: int
) -> list[tuple[float, float]]:
    """(first batch applied by a new owner, every shard taken) seconds after each SIGKILL."""
    stream = ShardedStream(loop, roots=8, slots=8, users=512, seed=7)
    cluster = Cluster(
        workdir / "failover", loop, stream, engine, moto, n=2, graph="failover", timings=timings, source=SOURCE
    )
    feeder = Feeder(stream, per_tick=20, interval=0.1)
    out = []
    try:
        cluster.start_all()
        cluster.wait_for(lambda: cluster.balanced([0, 1]), 120, "both instances holding shards")
        for _ in range(kills):
            counts = cluster.held_counts()
            victim = max((0, 1), key=lambda i: counts.get(i, 0))
            survivor = 1 - victim
            leases = cluster.leases()
            before = {p: lease.checkpoint for p, lease in leases.items() if cluster.instance_of(lease.owner) == victim}
            killed_at = time.monotonic()
            cluster.daemons[victim].kill()  # type: ignore[union-attr]
            first: float | None = None
            while True:
                now = cluster.leases()
                moved = [
                    p
                    for p, checkpoint in before.items()
                    if cluster.instance_of(now[p].owner) == survivor and now[p].checkpoint != checkpoint
                ]
                if moved and first is None:
                    first = time.monotonic() - killed_at
                if all(cluster.instance_of(now[p].owner) == survivor or now[p].ended for p in before):
                    break
                cluster.check_exits()
                if time.monotonic() - killed_at > timings.lease_duration * 3 + 30:
                    raise AssertionError(f"no takeover after the kill:\n{cluster.tails()}")
                time.sleep(0.05)
            taken = time.monotonic() - killed_at
            if first is None:  # the new owner's first checkpoint follows its take within a poll
                cluster.wait_for(
                    lambda b=before: any(cluster.leases()[p].checkpoint != c for p, c in b.items()),
                    30,
                    "the new owner's first checkpoint",
                    interval=0.05,
                )
                first = time.monotonic() - killed_at
            out.append((first, taken))
            cluster.start(victim)
            cluster.wait_for(
                lambda v=victim: cluster.held_counts().get(v, 0) >= 1, timings.take_interval * 4 + 60, "a lease again"
            )
        feeder.stop()
        cluster.stop_all()
        return out
    finally:
        feeder.stop()
        cluster.close()
        stream.close()


def run(quick: bool) -> Section:
    shards = 8 if quick else 32
    n = 4_000 if quick else 60_000
    kills = 2 if quick else 5
    failover_timings = QUICK_FAILOVER if quick else DEFAULTS
    with TemporaryDirectory(prefix="bench-shard-leases-") as tmp, aws_test_environment():
        workdir = Path(tmp)
        moto = MotoProcess(workdir)
        server, stop_engine = start_engine_in_thread(workdir / "engine")
        loop = LoopThread("bench-shard-leases")
        engine = (server.host, server.port, server.password)
        try:
            unit = asyncio.run(_unit_costs(moto.url, shards))
            others = {"engine": server.pid or 0, "moto": moto.proc.pid}
            one = _throughput(workdir, loop, engine, moto.url, 1, shards, n, others)
            two = _throughput(workdir, loop, engine, moto.url, 2, shards, n, others)
            failovers = _failover(workdir, loop, engine, moto.url, failover_timings, kills)
        finally:
            loop.close()
            stop_engine()
            moto.stop()

    def lease_cpu(result: dict[str, Any]) -> tuple[float, float]:
        """(lease-table client CPU seconds, of which lease calls without the checkpoint writes)."""
        total = lease_only = 0.0
        for kind, count in result["calls"].items():
            cost = count * (unit["query"] if kind.startswith("list") else unit["update"])
            total += cost
            if kind != "checkpoint write":
                lease_only += cost
        return total, lease_only

    rows = []
    shares = []
    for label, result in (("1 instance", one), ("2 instances", two)):
        rate = result["n"] / result["seconds"]
        table_cpu, lease_only = lease_cpu(result)
        share, lease_share = table_cpu / result["cpu"], lease_only / result["cpu"]
        shares.append((share, lease_share))
        calls = ", ".join(f"{kind}: {count:,}" for kind, count in sorted(result["calls"].items()))
        rows.append(
            [
                label,
                f"{result['n']:,}",
                f"{result['seconds']:.2f}",
                f"{rate:,.0f}",
                f"{result['cpu'] / result['n'] * 1e6:.0f}",
                f"{table_cpu / result['n'] * 1e6:.1f} ({share:.1%}); leases alone {lease_share:.2%}",
                f"{'/'.join(map(str, result['held']))}; {calls}; shards given up at a passed write deadline: "
                f"{result['given_up']}; CPU s of the shared parts: "
                + ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["shared_cpu"].items())
                + f"; instances {result['cpu']:.1f}",
            ]
        )
    ratio = (two["n"] / two["seconds"]) / (one["n"] / one["seconds"])
    firsts = [first for first, _ in failovers]
    takens = [taken for _, taken in failovers]
    rows.append(
        [
            f"failover, {kills} SIGKILLs (2 instances)",
            "",
            f"median {statistics.median(firsts):.2f}, max {max(firsts):.2f}",
            "",
            "",
            "",
            f"every shard taken: median {statistics.median(takens):.2f} s, max {max(takens):.2f} s; lease "
            f"{failover_timings.lease_duration:g} s, take every {failover_timings.take_interval:g} s",
        ]
    )
    worst_share = max(share for share, _ in shares)
    worst_lease = max(lease for _, lease in shares)
    bound = failover_timings.lease_duration + failover_timings.take_interval
    return Section(
        key="shard_leases",
        title="10. DynamoDB shards shared across instances",
        command=COMMAND,
        columns=[
            "run",
            "records",
            "seconds",
            "records/s",
            "instance CPU us/record",
            "lease table client CPU us/record (share)",
            "shards per instance; table calls during the run",
        ],
        rows=rows,
        targets=[
            Target("2 instances vs 1: ~1.6-1.9x (2 cores)", f"{ratio:.2f}x", 1.6 <= ratio),
            Target(
                f"lease bookkeeping < {LEASE_COST_TARGET:.0%} of the pipeline's CPU",
                f"{worst_lease:.2%} for the lease calls; {worst_share:.1%} with the checkpoint writes",
                worst_lease < LEASE_COST_TARGET,
            ),
            Target(
                f"failover (SIGKILL to the first batch applied by the new owner) <= lease + take interval "
                f"({bound:g} s) + 2 s",
                f"median {statistics.median(firsts):.2f} s, max {max(firsts):.2f} s",
                max(firsts) <= bound + 2,
            ),
        ],
        notes=(
            f"Throughput: {shards} open shards, {n:,} records put in at once after the instances shared the "
            f"shards evenly (lease {FAST.lease_duration:g} s, renew {FAST.renew_interval:g} s, take "
            f"{FAST.take_interval:g} s so they settle quickly; the defaults renew less often, so the lease calls "
            f"cost less there), GetRecords limit {SOURCE['limit']}, sink batches of {SINK['batch_size']}. The "
            "scripted stream, the proxies, moto and the engine run on the same 2 cores as the instances, so "
            "the second instance shares the machine with them: the ratio is a floor for separate hosts. Lease "
            f"table client CPU: one UpdateItem costs {unit['update'] * 1e6:.0f} us, one Query of {shards} items "
            f"{unit['query'] * 1e6:.0f} us of the caller's CPU here; the table cost is calls x those, against "
            'the instances\' whole CPU over the run (psutil). "Leases alone" is the lease protocol (take, '
            "renew, release, steal, the take rounds' listing); the checkpoint writes replace the SQLite store's "
            "and depend on the window size. A live instance that gives shards up at a passed write deadline "
            "(its renewals starved while the pipeline saturates the CPU) rereads them from their checkpoints: "
            "in a first run with a 6 s lease renewed every second, 2 instances on 32 shards gave up 50 shards "
            "and ran at 1,800 records/s against 3,760 for one instance on 16 shards. Where the time goes: the "
            "instances' CPU over a run is about a third of its wall time and the engine's is a fraction of a "
            "second, so neither saturates; the runs wait on round trips (GetRecords from the scripted stream "
            "served by this process, checkpoint writes to moto) on a machine other sessions load too, which is "
            "why a second instance on the same 2 cores does not raise the rate here. "
            f"Failover: lease {failover_timings.lease_duration:g} s, renew {failover_timings.renew_interval:g} "
            f"s, take {failover_timings.take_interval:g} s, margin {failover_timings.margin:g} s"
            + (" (the defaults)" if failover_timings == DEFAULTS else " (short test timings)")
            + "; the survivor takes a dead instance's lease after watching its counter unchanged for the lease "
            "duration, at its next take round."
        ),
    )
