"""RDF replication throughput: quads/s of the daemon vs a naive one-update-per-record consumer (issue 17).

Room in the design: the RDF section of `python -m tests.bench`. A seeded SPARQL stream history
(`tests.stand.rdf_workload`) is served by the stand's GetSparqlStream; each contender replicates all of it:

* **daemon -> embedded Oxigraph**: `run --exit-when-idle` (in-process) into an `oxigraph` sink;
* **naive -> embedded Oxigraph**: reads the same pages and runs one `INSERT DATA` / `DELETE DATA` `Store.update`
  per record, in order (what a hand-written poller does);
* **daemon -> SPARQL endpoint** and **naive -> SPARQL endpoint**: the same into the stand's pyoxigraph-backed
  `/sparql` endpoint over HTTP (the naive one with one request per record, waiting for each answer).

Every contender's result is checked against the reference dataset. All run in this process beside the stand,
so the numbers compare request patterns on one machine, not absolute service speeds. Both contenders run as the
daemon's CLI runs it: on uvloop, with the collector's thresholds of `daemon.cli.GC_THRESHOLDS` and the stand's
heap (every stream record, as dicts) frozen out of the collector's sight (`frozen_inputs`); without that the
daemon's young-generation collections rescan the stand's records, about 40% of its CPU in a profile (py-spy), and
a daemon process holds no such heap. The embedded pair runs `REPEAT` times (median); CPU is this process's (all
threads, the stand's included) per record.
Alone: `python -m tests.bench --only rdf [--quick]`.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pyoxigraph import Store

from daemon.config import load_config
from daemon.rdf import DELETE, INSERT, default_blank_node_prefix, parse_statement, sparql_data_block
from daemon.supervisor import Supervisor
from tests.bench._common import frozen_inputs, run_loop
from tests.bench.report import Section, Target
from tests.stand.daemon_process import AWS_ENV, write_config
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.rdf_workload import generate_rdf_history

AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=bench/20240101/us-east-1/neptune-db/aws4_request"}
PREFIX = default_blank_node_prefix("main")
REPEAT = 3


def _timed(action: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `action()`, with the stand's heap frozen."""
    with frozen_inputs():
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        return time.perf_counter() - wall, time.process_time() - cpu


def _daemon(stand: NeptuneStand, work: Path, sink: dict[str, Any]) -> tuple[float, float]:
    work.mkdir(parents=True, exist_ok=True)
    path = write_config(
        work / "config.toml",
        data_dir=work / "data",
        source={"kind": "neptune-sparql", "endpoint": stand.url, "region": "us-east-1", "limit": 5000},
        sink={"batch_size": 2000, **sink},
        daemon={"http_address": "", "log_level": "warning"},
    )
    config = load_config(path)

    def run() -> None:
        assert run_loop(Supervisor(config, exit_when_idle=True).run()) == 0

    return _timed(run)


def _naive(stand: NeptuneStand, apply: Any) -> tuple[float, float]:
    return _timed(lambda: run_loop(_naive_consumer(stand, apply)))


async def _naive_consumer(stand: NeptuneStand, apply: Any) -> None:
    """Read the stream page by page; `apply(update_text)` once per record, in order."""
    params: dict[str, Any] = {"iteratorType": "TRIM_HORIZON", "limit": 5000}
    async with aiohttp.ClientSession(headers=AUTH) as http:
        while True:
            async with http.get(f"{stand.url}/sparql/stream", params=params) as response:
                if response.status == 404:
                    break
                page = orjson.loads(await response.read())
            for record in page["records"]:
                quad = parse_statement(record["data"]["stmt"], PREFIX)
                await apply(http, f"{INSERT if record['op'] == 'ADD' else DELETE} {sparql_data_block([quad])}")
            last = page["lastEventId"]
            params = {"iteratorType": "AFTER_SEQUENCE_NUMBER", "commitNum": last["commitNum"],
                      "opNum": last["opNum"], "limit": 5000}  # fmt: skip


def _store_update(store: Store) -> Any:
    async def apply(http: aiohttp.ClientSession, update: str) -> None:
        store.update(update)

    return apply


def run(quick: bool) -> Section:
    os.environ.update(AWS_ENV)
    history = generate_rdf_history(6, 1500 if quick else 6000, blank_node_prefix=PREFIX, max_ops=12, pool=3000)
    n = history.n_ops
    rows: list[list[Any]] = []
    with NeptuneStand() as stand, tempfile.TemporaryDirectory(prefix="bench-rdf-") as tmp:
        for ops in history.commits:
            stand.sparql_stream.append_commit(ops)
        work = Path(tmp)
        timings: dict[str, list[tuple[float, float]]] = {}

        for attempt in range(REPEAT):  # alternating, so both see the same share of the machine's other work
            d1 = work / f"d1-{attempt}"
            timings.setdefault("daemon_embedded", []).append(_daemon(stand, d1, {"kind": "oxigraph"}))
            store = Store(str(d1 / "data" / "oxigraph" / "target"))
            assert set(store.quads_for_pattern(None, None, None, None)) == history.reference
            del store

            naive_store = Store(str(work / f"naive-{attempt}"))
            timings.setdefault("naive_embedded", []).append(_naive(stand, _store_update(naive_store)))
            assert set(naive_store.quads_for_pattern(None, None, None, None)) == history.reference
            del naive_store

        sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1"}
        timings["daemon_endpoint"] = [_daemon(stand, work / "d2", sink)]
        assert set(stand.rdf_store.quads_for_pattern(None, None, None, None)) == history.reference
        stand.rdf_store.clear()

        async def endpoint(http: aiohttp.ClientSession, update: str) -> None:
            async with http.post(f"{stand.url}/sparql", data={"update": update}) as response:
                response.raise_for_status()

        timings["naive_endpoint"] = [_naive(stand, endpoint)]
        assert set(stand.rdf_store.quads_for_pattern(None, None, None, None)) == history.reference

    def wall(key: str) -> float:
        return statistics.median(w for w, _ in timings[key])

    def cpu_us(key: str) -> float:
        return statistics.median(c for _, c in timings[key]) / n * 1e6

    for target, daemon_key, naive_key in (
        ("embedded Oxigraph", "daemon_embedded", "naive_embedded"),
        ("SPARQL endpoint (stand)", "daemon_endpoint", "naive_endpoint"),
    ):
        d, v = n / wall(daemon_key), n / wall(naive_key)
        rows.append([target, f"{n:,}", f"{d:,.0f}", f"{v:,.0f}", f"{d / v:.1f}x",
                     f"{cpu_us(daemon_key):.0f} / {cpu_us(naive_key):.0f}"])  # fmt: skip
    ratio_embedded = wall("naive_embedded") / wall("daemon_embedded")
    ratio_endpoint = wall("naive_endpoint") / wall("daemon_endpoint")
    return Section(
        key="rdf",
        title="12. RDF: quads/s, daemon vs one update per record",
        command="python -m tests.bench --only rdf",
        columns=["target", "records", "daemon quads/s", "naive quads/s", "daemon / naive", "CPU us/record d / n"],
        rows=rows,
        targets=[
            Target(">= 10x the naive consumer into a SPARQL endpoint", f"{ratio_endpoint:.1f}x", ratio_endpoint >= 10),
            Target(">= 2x the naive consumer into the embedded store", f"{ratio_embedded:.1f}x", ratio_embedded >= 2),
        ],
        notes=(
            f"{len(history.commits):,} commits, {n:,} ADD/REMOVE records of a seeded history (named graphs, blank "
            "nodes, typed and language-tagged literals, escapes, add/remove/re-add); every contender's result "
            "equals the reference dataset. The daemon coalesces each window to the last operation per quad and "
            "sends one INSERT DATA and one DELETE DATA per batch of 2,000 quads; the naive consumer sends one "
            "update per record and waits for it. All in one process beside the stand, both contenders on uvloop with "
            "the stand's heap frozen and the daemon's collector thresholds (as `graph-replicator run` runs); the "
            f"embedded pair is the median of {REPEAT} alternating runs, the endpoint pair one run each. CPU is this "
            "process's, all threads (the stand's serving and the store's writes included), per record."
        ),
    )
