"""Issue 6, item 5: throughput and p99 batch latency by sink concurrency and injected conflict rate.

Room in the design: one benchmark of `tests/bench/` (`python -m tests.bench --only concurrency`).

A seeded history is translated and planned once (pages of 1,000, windows of 8 pages); for every sink
concurrency (1, 2, 4, 8, 16) and ConcurrentModificationException rate (0 %, 5 %, 20 %, injected by the test
endpoint on the openCypher API), the daemon's `PlanApplier` applies the plans through the Neptune sink
(aiobotocore, HTTP) to the endpoint, with the daemon's default retry policy (full jitter from 0.1 s, split after
4 failures), into a cleared target graph. Throughput is changes per second of applying; batch latency is the
time from a chunk's first attempt to its success, retries and their back-off included (p99 over every chunk),
and the request latency what `graph_replicator_batch_duration_seconds` observes (one attempt). Configurations
run in a rotating order each repetition; medians of the repetitions. Every final graph of the first repetition
is compared with the reference.

The endpoint runs in this process (a thread) and is backed by one FalkorDB, which runs writes to a graph one
at a time: concurrency here overlaps client work, server work and back-off sleeps, but it cannot show a
cluster's parallel write capacity, and the injected conflict rate does not grow with concurrency as real
conflicts do. Read the plot for its shape, not its absolute numbers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from daemon.config import NeptuneSinkConfig
from daemon.deadletter import DeadLetterFile
from daemon.scheduler import Batch, Mutation, Plan, Planner
from daemon.sinks.base import PlanApplier, RetryPolicy
from daemon.sinks.neptune import NeptuneSink
from daemon.sources.pgjson import translate_record
from tests.bench._common import fmt, median, percentile, run_loop
from tests.bench._stand import BATCH_SIZE, PAGE, WINDOW_PAGES, clear_stand_graph, differences, stand_graph
from tests.bench.report import PLOTS, Section, Target
from tests.stand.daemon_process import AWS_ENV
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import History, generate_history

KEY = "concurrency"
COMMAND = "python -m tests.bench --only concurrency"
CONCURRENCIES = (1, 2, 4, 8, 16)
CONFLICT_RATES = (0.0, 0.05, 0.2)


class _TimedApplier(PlanApplier):
    """`PlanApplier` that records each chunk's latency (first attempt to success, back-off included)."""

    latencies: list[float]

    async def _run_chunk(self, batch: Batch, rows: list[dict[str, Any]], mutations: Any) -> None:
        started = time.perf_counter()
        await super()._run_chunk(batch, rows, mutations)
        self.latencies.append(time.perf_counter() - started)


class _CountingSink(NeptuneSink):
    requests: list[float]

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        try:
            return await super().execute(statement, rows)
        finally:
            self.requests.append(time.perf_counter() - started)


DEFAULT = NeptuneSinkConfig.model_fields["concurrency"].default  # the sinks' `concurrency` default


def _plans(history: History) -> list[Plan]:
    """The history's plans for the Neptune dialect, as the daemon makes them during a catch-up."""
    from daemon.cypher import neptune_dialect

    async def no_lookup(ids: list[str]) -> dict[str, str]:
        return {}

    async def make() -> list[Plan]:
        planner = Planner(neptune_dialect(), no_lookup, 10**9)
        records = [orjson.loads(orjson.dumps(r)) for r in history.records()]
        window = PAGE * WINDOW_PAGES
        return [
            await planner.plan([translate_record(r) for r in records[i : i + window]])
            for i in range(0, len(records), window)
        ]

    return run_loop(make())


async def _apply(url: str, plans: list[Plan], concurrency: int, tmp: Path) -> dict[str, Any]:
    sink = _CountingSink("bench", endpoint=url, region="us-east-1", concurrency=concurrency)
    sink.requests = []
    applier = _TimedApplier(
        sink,
        source="bench",
        batch_size=BATCH_SIZE,
        concurrency=asyncio.Semaphore(concurrency),
        retry=RetryPolicy(),
        dead_letters=DeadLetterFile(tmp / "dead.jsonl"),
    )
    applier.latencies = []
    await sink.start()
    try:
        started = time.perf_counter()
        applied = 0
        for plan in plans:
            applied += await applier.apply(plan)
        seconds = time.perf_counter() - started
    finally:
        await sink.close()
    return {"seconds": seconds, "applied": applied, "latencies": applier.latencies, "requests": sink.requests}


def _mutation_count(plans: list[Plan]) -> int:
    seen: set[int] = set()
    for plan in plans:
        for batch in plan.batches():
            seen.update(id(m) for m in batch.mutations if isinstance(m, Mutation))
    return len(seen)


def run(quick: bool) -> Section:
    n, reps = (600, 1) if quick else (2_000, 2)
    concurrencies = (1, 4, 16) if quick else CONCURRENCIES
    rates = (0.0, 0.2) if quick else CONFLICT_RATES
    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    history = generate_history(31, n, weird_names=False)
    plans = _plans(history)
    configs = [(c, r) for r in rates for c in concurrencies]
    results: dict[tuple[int, float], list[dict[str, Any]]] = {cfg: [] for cfg in configs}
    problems: list[str] = []
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # no retry warnings
    try:
        with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp, NeptuneStand() as stand:
            for rep in range(reps):
                shift = rep * 7 % len(configs)
                for concurrency, rate in configs[shift:] + configs[:shift]:
                    clear_stand_graph(stand)
                    stand.faults.configure(rate, ["concurrent_modification"], seed=rep, paths=("opencypher",))
                    result = run_loop(_apply(stand.url, plans, concurrency, Path(tmp)))
                    result["injected"] = stand.faults.injected["concurrent_modification"]
                    stand.faults.clear()
                    results[(concurrency, rate)].append(result)
                    if rep == 0:
                        found = differences(history.reference, stand_graph(stand))
                        if found:
                            problems.append(f"c={concurrency} rate={rate:.0%}: " + "; ".join(found))
    finally:
        structlog.reset_defaults()

    columns = [
        "conflict rate",
        "concurrency",
        "changes/s",
        "p50 batch s",
        "p99 batch s",
        "p99 request s",
        "conflicts injected",
    ]
    rows: list[list[Any]] = []
    summary: dict[tuple[int, float], tuple[float, float]] = {}
    for concurrency, rate in configs:
        runs = results[(concurrency, rate)]
        throughput = median([history.n_records / r["seconds"] for r in runs])
        p50 = median([percentile(r["latencies"], 0.5) for r in runs])
        p99 = median([percentile(r["latencies"], 0.99) for r in runs])
        p99_request = median([percentile(r["requests"], 0.99) for r in runs])
        summary[(concurrency, rate)] = (throughput, p99)
        rows.append(
            [
                f"{rate:.0%}",
                concurrency,
                f"{throughput:,.0f}",
                fmt(p50, 3),
                fmt(p99, 3),
                fmt(p99_request, 3),
                f"{median([r['injected'] for r in runs]):,.0f}",
            ]
        )
    choice = recommend(summary, concurrencies, rates)
    plot = _plot(summary, concurrencies, rates, "concurrency-quick.png" if quick else "concurrency.png")
    targets = [
        Target("same final graph as the reference at every setting", "; ".join(problems) or "identical", not problems),
        Target(
            "default concurrency chosen from the plot",
            f"{DEFAULT}, the daemon's default (this run's rule pick: {choice}; every setting above 1 is within the "
            "spread)",
            None,
        ),
    ]
    notes = (
        f"{history.n_records:,} changes in {len(plans)} windows; median of {reps} run(s) per setting.\n\n"
        f"**The rule's pick in this run: `concurrency` = {choice}** (the smallest setting within 10 % of the best "
        "throughput summed over the conflict rates; 10 % is the run-to-run spread here). Runs of this section on "
        "this machine picked 2, 8 and 16: beyond 1 lane, every setting is within the spread, and under "
        f"conflicts the retry back-off, not the lanes, sets the pace. **The daemon's default stays {DEFAULT}**: it "
        "never lost clearly to another setting, it is above the clear loser (1), and it leaves room for a "
        "real cluster's parallelism. The test endpoint executes one statement at a time, so this measures how "
        "well the daemon overlaps its own work and retries with the endpoint's, not a multi-core cluster's "
        "parallelism: on Neptune, size `concurrency` to the writer's vCPUs and watch "
        '`graph_replicator_retries_total{reason="conflict"}`.\n\n' + (__doc__ or "").split("\n\n", 2)[2].strip()
    )
    return Section(
        KEY,
        "5. Conflicts and concurrency",
        COMMAND,
        columns,
        rows,
        targets,
        notes,
        [plot] if plot is not None else [],
    )


def recommend(
    summary: dict[tuple[int, float], tuple[float, float]],
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    rates: tuple[float, ...] = CONFLICT_RATES,
) -> int:
    """The concurrency with the best throughput summed over the conflict rates; a smaller one within 10 % of it
    (the run-to-run spread here) wins, since every extra lane adds conflicts and p99 latency."""
    total = {c: sum(summary[(c, rate)][0] for rate in rates) for c in concurrencies}
    best = max(total.values())
    return next(c for c in concurrencies if total[c] >= 0.9 * best)


def _plot(
    summary: dict[tuple[int, float], tuple[float, float]],
    concurrencies: tuple[int, ...],
    rates: tuple[float, ...],
    filename: str = "concurrency.png",
) -> Path | None:
    """Throughput and p99 batch latency by concurrency, a line per conflict rate (quick runs use another file,
    so a smoke test never overwrites the published plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the bench extra
        return None
    PLOTS.mkdir(parents=True, exist_ok=True)
    path = PLOTS / filename
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for rate in rates:
        label = f"{rate:.0%} conflicts"
        left.plot(concurrencies, [summary[(c, rate)][0] for c in concurrencies], marker="o", label=label)
        right.plot(concurrencies, [summary[(c, rate)][1] for c in concurrencies], marker="o", label=label)
    for ax, title in ((left, "throughput (changes/s)"), (right, "p99 batch latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set_xlabel("sink concurrency")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    fig.suptitle(f"Neptune sink into the test endpoint, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
