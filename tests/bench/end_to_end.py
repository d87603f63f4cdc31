"""Issue 6, items 2 and 3: the daemon end to end against the engine's own limit and against the naive consumer.

Room in the design: one benchmark of `tests/bench/` (`python -m tests.bench --only end_to_end`).

* **Item 2, vs the engine's own limit.** A seeded history sits in the stream of the Neptune-compatible test
  endpoint (`tests/stand`). *Daemon*: `graph-replicator run --exit-when-idle` (a process, defaults except the
  idle poll ceiling) replicates it into a FalkorDB graph. *Direct*: the same final batched statements (what the
  daemon's planner makes of the history in pages of 1,000 and windows of 20 pages, as the daemon fills a window
  up to `window_max_changes` while it is behind, in chunks of 500 rows) run one
  after another on a fresh graph through the FalkorDB client, with no daemon. Both write to the same FalkorDB
  engine (the stand's, `appendfsync always` like the daemon's embedded default), each repetition to a fresh
  graph; the daemon's time runs from its start (HTTP server up, before the sink connects) to its own
  "caught up" log line.
* **Item 3, vs the naive consumer.** The same endpoint as both source and target: the daemon with a `neptune`
  sink, against `tests/bench/_naive.py` (one statement per record over HTTP, in order), each a process of its
  own, on the same history, into the same (cleared) target graph.

Contenders alternate (their order flips every repetition); every final graph of the first repetition is read
back and compared with the history's reference graph (`tests/stand/comparator.py`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import falkordb
import orjson

from daemon.cypher import falkordb_dialect
from tests.bench._common import fmt, median, ratio_text
from tests.bench._stand import (
    Stopwatch,
    clear_stand_graph,
    differences,
    edge_types_of,
    load_stand,
    planned_statements,
    run_daemon,
    stand_graph,
)
from tests.bench.report import ROOT, Section, Target
from tests.stand.comparator import read_falkordb_graph
from tests.stand.daemon_process import AWS_ENV
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import History, generate_history

KEY = "end_to_end"
COMMAND = "python -m tests.bench --only end_to_end"
ENGINE_TARGET = 0.9  # issue 14: kept at >= 0.9 x
NAIVE_TARGET = 15.0  # issue 14
SLOW_TARGET = 30.0  # issue 14: the same with LATENCY added to every request
# The direct contender's windows: the daemon fills a window up to `window_max_changes` (20,000) while behind.
CATCH_UP_WINDOW_PAGES = 20
# The endpoint answers in about 1 ms on loopback; a Neptune cluster is a network round trip away and does a
# commit per request, a few milliseconds. This row repeats item 3 with that much added to every request.
LATENCY = 0.002
LATENCY_ITEM = "3. vs the naive consumer, 2 ms a request"


def _direct(db: Any, graph_name: str, statements: list[tuple[str, list[dict[str, Any]]]], types: list[str]) -> float:
    """Run the planned statements on a fresh graph, as the daemon's sink prepares it (indexes first)."""
    dialect = falkordb_dialect()
    graph = db.select_graph(graph_name)
    clock = Stopwatch()
    graph.query(f"CREATE INDEX FOR (n:{dialect.quote(dialect.base_label or '')}) ON (n.{dialect.id_key})")
    for edge_type in types:
        graph.query(f"CREATE INDEX FOR ()-[e:{dialect.quote(edge_type)}]-() ON (e.{dialect.id_key})")
    for statement, rows in statements:
        graph.query(statement, {"rows": rows})
    return clock.seconds


def _check(history: History, actual: Any, what: str, problems: list[str]) -> None:
    found = differences(history.reference, actual)
    if found:
        problems.append(f"{what}: " + "; ".join(found))


def _delete(db: Any, name: str) -> None:
    try:
        db.select_graph(name).delete()
    except Exception:
        pass


def engine_limit(stand: NeptuneStand, history: History, reps: int, tmp: Path, problems: list[str]) -> dict[str, Any]:
    load_stand(stand, history)
    statements = list(planned_statements(history, falkordb_dialect(), CATCH_UP_WINDOW_PAGES))
    types = edge_types_of(history)
    db = falkordb.FalkorDB(host=stand.engine.host, port=stand.engine.port, password=stand.engine.password)
    seconds: dict[str, list[float]] = {"daemon": [], "direct": []}
    for rep in range(reps):
        order = ("daemon", "direct") if rep % 2 == 0 else ("direct", "daemon")
        for contender in order:
            name = f"bench_{contender}_{rep}"
            if contender == "daemon":
                sink = {"kind": "falkordb", "url": stand.engine.url, "password": stand.engine.password, "graph": name}
                seconds["daemon"].append(run_daemon(tmp / f"e2e-{rep}", stand, sink))
            else:
                seconds["direct"].append(_direct(db, name, statements, types))
            if rep == 0:
                _check(history, read_falkordb_graph(db.select_graph(name)), f"item 2 {contender}", problems)
            _delete(db, name)
    return {"seconds": seconds, "statements": len(statements), "rows": sum(len(r) for _, r in statements)}


def _naive(stand: NeptuneStand) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench._naive", stand.url],
        capture_output=True,
        check=True,
        cwd=ROOT,
        env={**AWS_ENV, **_env()},
        timeout=1800,
    )
    return orjson.loads(out.stdout.splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def vs_naive(
    stand: NeptuneStand, history: History, reps: int, tmp: Path, problems: list[str], latency: float = 0.0
) -> dict[str, Any]:
    """Both contenders on `history`; `latency` seconds are added to every request the endpoint answers."""
    load_stand(stand, history)
    stand.request_latency_seconds = latency
    seconds: dict[str, list[float]] = {"daemon": [], "naive": []}
    requests = daemon_requests = 0
    for rep in range(reps):
        order = ("daemon", "naive") if rep % 2 == 0 else ("naive", "daemon")
        for contender in order:
            clear_stand_graph(stand)
            if contender == "daemon":
                sink = {"kind": "neptune", "endpoint": stand.url, "region": "us-east-1"}
                before = sum(stand.requests.values())
                seconds["daemon"].append(run_daemon(tmp / f"naive-{rep}-{latency}", stand, sink))
                daemon_requests = sum(stand.requests.values()) - before
            else:
                result = _naive(stand)
                if result["records"] != history.n_records:
                    problems.append(f"item 3 naive consumer read {result['records']} of {history.n_records} records")
                seconds["naive"].append(result["seconds"])
                requests = result["requests"]
            if rep == 0:
                _check(history, stand_graph(stand), f"item 3 {contender}", problems)
    clear_stand_graph(stand)
    stand.request_latency_seconds = 0.0
    return {"seconds": seconds, "requests": requests, "daemon_requests": daemon_requests}


def run(quick: bool) -> Section:
    n_engine, n_naive, reps = (10_000, 1_000, 2) if quick else (200_000, 10_000, 3)
    problems: list[str] = []
    big = generate_history(21, n_engine, weird_names=False)
    small = generate_history(22, n_naive, weird_names=False)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp_name, NeptuneStand() as stand:
        tmp = Path(tmp_name)
        engine = engine_limit(stand, big, reps, tmp, problems)
        naive = vs_naive(stand, small, reps, tmp, problems)
        slow = vs_naive(stand, small, reps, tmp, problems, latency=LATENCY)

    columns = ["comparison", "changes", "contender", "median s", "runs (s)", "changes/s", "ratio (daemon / other)"]
    rows: list[list[Any]] = []
    rate: dict[str, float] = {}
    for item, history, result, other in (
        ("2. vs the engine's own limit", big, engine, "direct"),
        ("3. vs the naive consumer", small, naive, "naive"),
        (LATENCY_ITEM, small, slow, "naive"),
    ):
        n = history.n_records
        for contender in ("daemon", other):
            runs = result["seconds"][contender]
            rate[f"{item}:{contender}"] = n / median(runs)
        ratio = rate[f"{item}:daemon"] / rate[f"{item}:{other}"]
        for contender in ("daemon", other):
            runs = result["seconds"][contender]
            label = {
                "daemon": "daemon (process, from the stream)",
                "direct": "FalkorDB, planned statements, no daemon",
                "naive": "naive consumer (1 statement / record)",
            }[contender]
            rows.append(
                [
                    item,
                    f"{n:,}",
                    label,
                    fmt(median(runs), 2),
                    ", ".join(f"{s:.2f}" for s in runs),
                    f"{rate[f'{item}:{contender}']:,.0f}",
                    ratio_text(ratio) if contender == "daemon" else "",
                ]
            )
    engine_ratio = rate["2. vs the engine's own limit:daemon"] / rate["2. vs the engine's own limit:direct"]
    naive_ratio = rate["3. vs the naive consumer:daemon"] / rate["3. vs the naive consumer:naive"]
    slow_ratio = rate[f"{LATENCY_ITEM}:daemon"] / rate[f"{LATENCY_ITEM}:naive"]
    targets = [
        Target(f"daemon >= {ENGINE_TARGET} x the direct rate", f"{engine_ratio:.2f} x", engine_ratio >= ENGINE_TARGET),
        Target(f"daemon >= {NAIVE_TARGET:g} x the naive consumer", f"{naive_ratio:.1f} x", naive_ratio >= NAIVE_TARGET),
        Target(
            f"daemon >= {SLOW_TARGET:g} x the naive consumer with {LATENCY * 1000:g} ms added to every request",
            f"{slow_ratio:.1f} x",
            slow_ratio >= SLOW_TARGET,
        ),
        Target("same final graph as the reference, every contender", "; ".join(problems) or "identical", not problems),
    ]
    notes = (
        f"Item 2: {big.n_records:,} changes ({len(big.commits):,} commits, seeded `generate_history`, plain names); "
        f"the direct contender ran {engine['statements']:,} statements with {engine['rows']:,} rows in all. "
        f"Item 3: {small.n_records:,} changes; the naive consumer sent {naive['requests']:,} requests, the daemon "
        f"{naive['daemon_requests']:,} (stream pages and batched statements). Median of "
        f"{reps} runs, contenders alternating.\n\n" + (__doc__ or "").split("\n\n", 2)[2].strip()
    )
    notes += "\n\n" + STATEMENT_STEPS
    if gaps := gap_notes(engine_ratio, naive_ratio, slow_ratio):
        notes += "\n\n" + gaps
    return Section(
        KEY, "2-3. End to end: vs the engine's own limit, vs the naive consumer", COMMAND, columns, rows, targets, notes
    )


# What issue 14's statement steps (branch perf-e2e) gained on item 3, measured side by side with the tree before
# them by `python -m tests.bench.e2e_trees REV --reps N` (both daemons as processes on one stand and history).
STATEMENT_STEPS = (
    "**Item 3, where the time went and what cut it** (issue 14, round 2; `python -m tests.bench.e2e_trees REV`, "
    "this tree's daemon and REV's as processes on one stand and history, alternating, median of 3-5, load 3-7 "
    "on 2 cores). Before: 977 statements for 10,014 changes, each about 3-4 ms end to end (the daemon's client "
    "CPU, SigV4 signing included, about 1.5 ms; the stand 0.7 ms; the engine 0.8 ms), in mostly serial phases; "
    "0.6-0.75 s from the HTTP server up to the first window (aiobotocore's import and the clients); the history "
    "applied in two windows (what was queued when the sink was ready, then the rest); 0-100 ms until the idle "
    "exit noticed. Steps: (1) property removals of any keys in one statement per layer (a row's list of one-key "
    "null maps, `UNWIND r.removed AS m SET n += m`: FalkorDB 1.4.1 goes wrong only with several nulls in one "
    "map, tests/test_cypher_engine.py) and Neptune edge deletes of every type in one statement (by id between "
    "the endpoints): 977 -> 692 statements, 5.39 -> 4.17 s; (2) a vertex's property changes and label additions "
    "after an edge touched it join its open mutation (they commute with what the edge needs of its endpoints), "
    "so windows have fewer layers: 692 -> 480 statements, 4.19 -> 2.57 s against main; (3) the idle exit wakes "
    "when a window ends caught up (89 ms -> 0 ms after the last window); (4) one botocore session per event "
    "loop and profile (the source's and the sink's clients load the model once: 0.1 s of CPU at start); "
    "(5) while the source is behind (full pages), a window waits for the next page up to `window_max_changes`: "
    "the history goes in one window, 480 -> 338 statements, 1.87 -> 1.44 s. All together against main: 4.09 -> "
    "2.29 s, and 5.35 -> 2.59 s with 2 ms a request (load 5-6), every final graph identical."
)


def gap_notes(engine_ratio: float, naive_ratio: float, slow_ratio: float) -> str:
    """Why a missed target was missed (measured causes, see docs/performance.md)."""
    out = []
    if engine_ratio < ENGINE_TARGET:
        out.append(
            "**Item 2 gap.** The direct contender's reading, translating and planning happened before its clock "
            "started; the daemon does all of it on its one Python thread while it applies: the stream read over "
            "HTTP through botocore (about 5 µs a record), translation and planning (item 1: 8-15 µs a change on "
            "this machine), and the FalkorDB client's parameter text and reply parsing, which both contenders pay. "
            "The source task overlaps reading with the engine's work, but on two shared cores (load average above "
            "3 during this run) the daemon's CPU competes with the engine's; the direct runs themselves varied by "
            "2 x between repetitions. Lowering the pipeline cost (item 1) is what closes this gap."
        )
    if naive_ratio < NAIVE_TARGET or slow_ratio < SLOW_TARGET:
        out.append(
            "**Item 3 gap.** On loopback a request to the test endpoint costs about 1 ms in all, much of it "
            "client CPU. The daemon's batch statements no longer go through the whole botocore client pipeline "
            "(`daemon.aws.SignedCall`: the request botocore builds is captured once, and each call is a copy "
            "with a new body signed by botocore's SigV4 signer, on the client's pooled aiohttp session), which "
            "cut the client CPU of a call by about 40 % (1.5 -> 0.9 ms on this loaded machine, side by side); "
            "the naive consumer still posts with a bare aiohttp session and a fixed, unsigned header (in its "
            "favour). The daemon sends far fewer requests (stream pages and batched statements, counted above), "
            "but each statement still costs the client, the endpoint and the engine about 3 ms here, and the "
            "planner still cuts a window by layer, phase, label and edge type (labels and relationship types "
            "are statement text in openCypher: about 30 changes a statement here, far below `batch_size`). "
            "A real Neptune endpoint is a network round trip "
            "away and commits every request, a few milliseconds: with 2 ms added to every request (the last "
            f"rows) the daemon is {slow_ratio:.1f} x the naive consumer, because the daemon pays that latency "
            "once per batch and in parallel lanes, the naive consumer once per record. Measuring against a real "
            "cluster is what would settle the target."
        )
        out.append(
            "What issue 14's request-path steps gained, side by side with the tree before them (d25f421) on the "
            "same stand and history, alternating, median of 3, on the same loaded machine (load average 8): "
            "4.05 s against 5.16 s without added latency, 6.00 s against 8.54 s with 2 ms a request; both trees "
            "sent the same 977 statements. The statement steps above then cut the statements to 338 (about 30 "
            "changes a statement). On a loaded machine the ratios fall (every contender takes 2-5 x its quiet "
            "time, the daemon's CPU-bound work more than the naive consumer's waits), so compare ratios of runs "
            "at similar load."
        )
    return "\n\n".join(out)
