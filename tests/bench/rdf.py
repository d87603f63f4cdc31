"""RDF replication throughput: quads/s of the daemon vs a naive one-update-per-record consumer (issue 17).

Room in the design: the RDF section of `python -m tests.bench`. A seeded SPARQL stream history
(`tests.stand.rdf_workload`) is served by the stand's GetSparqlStream; each contender replicates all of it:

* **daemon -> embedded Oxigraph**: `run --exit-when-idle` (in-process) into an `oxigraph` sink;
* **naive -> embedded Oxigraph**: reads the same pages and runs one `INSERT DATA` / `DELETE DATA` `Store.update`
  per record, in order (what a hand-written poller does);
* **daemon -> SPARQL endpoint** and **naive -> SPARQL endpoint**: the same into the stand's pyoxigraph-backed
  `/sparql` endpoint over HTTP (the naive one with one request per record, waiting for each answer).

Every contender's result is checked against the reference dataset. All run in this process beside the stand,
so the numbers compare request patterns on one machine, not absolute service speeds.
Alone: `python -m tests.bench --only rdf [--quick]`.
"""

from __future__ import annotations

import asyncio
import os
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
from tests.bench.report import Section, Target
from tests.stand.daemon_process import AWS_ENV, write_config
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.rdf_workload import generate_rdf_history

AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=bench/20240101/us-east-1/neptune-db/aws4_request"}
PREFIX = default_blank_node_prefix("main")


def _daemon(stand: NeptuneStand, work: Path, sink: dict[str, Any]) -> float:
    work.mkdir(parents=True, exist_ok=True)
    path = write_config(
        work / "config.toml",
        data_dir=work / "data",
        source={"kind": "neptune-sparql", "endpoint": stand.url, "region": "us-east-1", "limit": 5000},
        sink={"batch_size": 2000, **sink},
        daemon={"http_address": "", "log_level": "warning"},
    )
    loop = asyncio.new_event_loop()
    try:
        started = time.perf_counter()
        assert loop.run_until_complete(Supervisor(load_config(path), exit_when_idle=True).run()) == 0
        return time.perf_counter() - started
    finally:
        loop.close()


async def _naive(stand: NeptuneStand, apply: Any) -> float:
    """Read the stream page by page; `apply(update_text)` once per record, in order."""
    params: dict[str, Any] = {"iteratorType": "TRIM_HORIZON", "limit": 5000}
    started = time.perf_counter()
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
    return time.perf_counter() - started


def run(quick: bool) -> Section:
    os.environ.update(AWS_ENV)
    history = generate_rdf_history(6, 1500 if quick else 6000, blank_node_prefix=PREFIX, max_ops=12, pool=3000)
    n = history.n_ops
    rows: list[list[Any]] = []
    with NeptuneStand() as stand, tempfile.TemporaryDirectory(prefix="bench-rdf-") as tmp:
        for ops in history.commits:
            stand.sparql_stream.append_commit(ops)
        work = Path(tmp)
        timings: dict[str, float] = {}

        timings["daemon_embedded"] = _daemon(stand, work / "d1", {"kind": "oxigraph"})
        store = Store(str(work / "d1" / "data" / "oxigraph" / "target"))
        assert set(store.quads_for_pattern(None, None, None, None)) == history.reference
        del store

        naive_store = Store(str(work / "naive"))
        update_naive = naive_store.update

        async def embedded(http: aiohttp.ClientSession, update: str) -> None:
            update_naive(update)

        timings["naive_embedded"] = asyncio.run(_naive(stand, embedded))
        assert set(naive_store.quads_for_pattern(None, None, None, None)) == history.reference
        del naive_store

        sink = {"kind": "sparql", "update_url": f"{stand.url}/sparql", "auth": "sigv4", "region": "us-east-1"}
        timings["daemon_endpoint"] = _daemon(stand, work / "d2", sink)
        assert set(stand.rdf_store.quads_for_pattern(None, None, None, None)) == history.reference
        stand.rdf_store.clear()

        async def endpoint(http: aiohttp.ClientSession, update: str) -> None:
            async with http.post(f"{stand.url}/sparql", data={"update": update}) as response:
                response.raise_for_status()

        timings["naive_endpoint"] = asyncio.run(_naive(stand, endpoint))
        assert set(stand.rdf_store.quads_for_pattern(None, None, None, None)) == history.reference

    for target, daemon_key, naive_key in (
        ("embedded Oxigraph", "daemon_embedded", "naive_embedded"),
        ("SPARQL endpoint (stand)", "daemon_endpoint", "naive_endpoint"),
    ):
        d, v = n / timings[daemon_key], n / timings[naive_key]
        rows.append([target, f"{n:,}", f"{d:,.0f}", f"{v:,.0f}", f"{d / v:.1f}x"])
    ratio_endpoint = timings["naive_endpoint"] / timings["daemon_endpoint"]
    return Section(
        key="rdf",
        title="12. RDF: quads/s, daemon vs one update per record",
        command="python -m tests.bench --only rdf",
        columns=["target", "records", "daemon quads/s", "naive quads/s", "daemon / naive"],
        rows=rows,
        targets=[
            Target(">= 10x the naive consumer into a SPARQL endpoint", f"{ratio_endpoint:.1f}x", ratio_endpoint >= 10)
        ],
        notes=(
            f"{len(history.commits):,} commits, {n:,} ADD/REMOVE records of a seeded history (named graphs, blank "
            "nodes, typed and language-tagged literals, escapes, add/remove/re-add); every contender's result "
            "equals the reference dataset. The daemon coalesces each window to the last operation per quad and "
            "sends one INSERT DATA and one DELETE DATA per batch of 2,000 quads; the naive consumer sends one "
            "update per record and waits for it. All in one process beside the stand; one run of each contender, not "
            "a median of repetitions (so expect more spread between runs than in the other sections)."
        ),
    )
