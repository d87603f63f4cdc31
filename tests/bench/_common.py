"""Shared pieces of the benchmarks of `tests/bench/`: timing, medians, alternation, number formatting and the
serialise-only sink.

Room in the design: helpers for `pipeline_cost`, `end_to_end` and `concurrency` (issue 6). Every comparison
runs its contenders in the same process on the same data, alternating, and reports medians of repetitions.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson

from daemon.cli import GC_THRESHOLDS
from daemon.cypher import Dialect, falkordb_dialect, neptune_dialect
from daemon.sinks.base import RETRY, ErrorClass, GraphSink

T = TypeVar("T")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect before a timed run, and keep the cyclic collector out of it (as `without_gc` in the stand)."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextmanager
def frozen_inputs() -> Iterator[None]:
    """Move everything alive now (the benchmark's inputs) out of the collector's sight, as a daemon holds no
    such heap; the collector stays on for what the timed code allocates, with the daemon's thresholds
    (`daemon.cli.GC_THRESHOLDS`), as in the daemon."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def cpu_timed(action: Callable[[], T]) -> tuple[T, float]:
    """(result, CPU seconds of this process's threads spent in `action`)."""
    start = time.process_time()
    result = action()
    return result, time.process_time() - start


PERF_EVENTS = ("task-clock", "context-switches", "cpu-migrations", "page-faults")


@contextmanager
def cpu_accounting() -> Iterator[dict[str, float]]:
    """CPU accounting of this process while the block runs, `perf stat`-style, filled in when the block ends:
    `rusage_cpu_s` (user + system, `getrusage`), `voluntary_switches`, `involuntary_switches`, `major_faults`;
    and where `perf` can count this process's software events, `perf_task_clock_s`, `perf_context_switches`,
    `perf_cpu_migrations`, `perf_page_faults` (hardware counters are not assumed: virtual machines rarely
    expose them)."""
    out: dict[str, float] = {}
    perf_bin = shutil.which("perf")
    perf = None
    report = None
    if perf_bin is not None:
        report = tempfile.NamedTemporaryFile(prefix="perf-stat-", suffix=".csv", delete=False)
        report.close()
        events = ",".join(PERF_EVENTS)
        command = [perf_bin, "stat", "-x", ",", "-e", events, "-o", report.name, "-p", str(os.getpid())]
        perf = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # let it attach (an idle wait adds no task-clock)
        if perf.poll() is not None:  # not allowed here (perf_event_paranoid) or not working
            perf = None
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        yield out
    finally:
        after = resource.getrusage(resource.RUSAGE_SELF)
        out["rusage_cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        out["voluntary_switches"] = after.ru_nvcsw - before.ru_nvcsw
        out["involuntary_switches"] = after.ru_nivcsw - before.ru_nivcsw
        out["major_faults"] = after.ru_majflt - before.ru_majflt
        if perf is not None and report is not None:
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(10)
            except subprocess.TimeoutExpired:
                perf.kill()
            for line in open(report.name).read().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2] in PERF_EVENTS and fields[0].replace(".", "", 1).isdigit():
                    value = float(fields[0])
                    if fields[2] == "task-clock":
                        out["perf_task_clock_s"] = value / 1000  # msec
                    else:
                        out["perf_" + fields[2].replace("-", "_")] = value
        if report is not None:
            os.unlink(report.name)


def run_loop(coroutine: Any) -> Any:
    """Run a coroutine on uvloop (what the daemon's CLI uses), or asyncio's loop where uvloop is missing."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table: thousands separators, `digits` decimals below 100."""
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio_text(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f} x"


class SerialisingSink(GraphSink):
    """A sink that only serialises each request as the Neptune sink would (orjson), without the network.

    `bytes_out` sums the request sizes, so the work cannot be optimised away.
    """

    kind = "serialise"

    def __init__(self, dialect: Dialect | None = None, name: str = "serialise") -> None:
        self.name = name
        self.dialect = dialect or neptune_dialect()
        self.bytes_out = 0
        self.requests = 0

    async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = orjson.dumps({"query": statement, "parameters": orjson.dumps({"rows": rows}).decode()})
        self.bytes_out += len(body)
        self.requests += 1
        return []

    async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return []

    def classify(self, exc: BaseException) -> ErrorClass:
        return RETRY["connection"]


def dialect_for(kind: str) -> Dialect:
    return falkordb_dialect() if kind == "falkordb" else neptune_dialect()
