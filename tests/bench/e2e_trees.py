"""Item 3 of `end_to_end` alone (the daemon into the Neptune-compatible stand as both source and sink), this tree
against an earlier commit, side by side on one stand and one history.

Room in the design: the quick comparison behind item 3's per-step numbers in docs/performance.md
(`python -m tests.bench.e2e_trees REV [--reps 3] [--latency 0.002] [--changes 10000]`); not a section of the
page. REV's `daemon` package is exported (`git archive`) into a temporary directory and run from there as a
process (`python -m daemon`, that directory first on the path), this tree's from the tree; the contenders
alternate, each run into the cleared target graph. Per run: the daemon's own seconds (as `end_to_end` counts
them: "http server listening" to "every source is caught up"), the process's wall and CPU seconds, the CPU the
stand (this process's thread) and the engine (its redis-server) spent meanwhile, and the stand's requests by
path. The first run of each contender is compared with the history's reference graph.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench._common import median
from tests.bench._stand import (
    PAGE,
    _stamp,
    clear_stand_graph,
    differences,
    load_stand,
    stand_graph,
)
from tests.bench.report import ROOT
from tests.stand.daemon_process import AWS_ENV, write_config
from tests.stand.neptune_endpoint import NeptuneStand
from tests.stand.workload import generate_history


def _engine_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(
    tree: Path,
    tmp: Path,
    stand: NeptuneStand,
    extra: dict[str, Any],
    wrap: list[str] | None = None,
    log_level: str = "info",
) -> dict[str, Any]:
    """One daemon run of `tree` (a directory holding a `daemon` package) over the stand's stream."""
    tmp.mkdir(parents=True, exist_ok=True)
    source = {
        "kind": "neptune",
        "endpoint": stand.url,
        "region": "us-east-1",
        "limit": PAGE,
        "poll_interval_max_seconds": 0.2,
        **extra,
    }
    config = write_config(
        tmp / "config.toml",
        data_dir=tmp / "data",
        source=source,
        sink={"kind": "neptune", "endpoint": stand.url, "region": "us-east-1"},
        daemon={"log_level": log_level},
    )
    log_path = tmp / "daemon.log"
    before = dict(stand.requests)
    engine_pid = stand.engine.pid
    assert engine_pid is not None
    cpu0, engine0 = _self_cpu(), _engine_cpu(engine_pid)
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *(wrap or []), "-m", "daemon", "run", "--config", str(config), "--exit-when-idle"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV, "PYTHONPATH": str(tree)},
            cwd=tree,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stand_cpu, engine_cpu = _self_cpu() - cpu0, _engine_cpu(engine_pid) - engine0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"daemon of {tree} exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
    import orjson

    listening = caught_up = None
    for line in log_path.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        event = str(entry.get("event", ""))
        if event == "http server listening":
            listening = _stamp(entry)
        elif event.startswith("every source is caught up"):
            caught_up = _stamp(entry)
    assert listening is not None and caught_up is not None, log_path.read_text()[-3000:]
    requests = {k: v - before.get(k, 0) for k, v in stand.requests.items() if v - before.get(k, 0)}
    return {
        "seconds": caught_up - listening,
        "wall": wall,
        "daemon_cpu": usage.ru_utime + usage.ru_stime,
        "stand_cpu": stand_cpu,
        "engine_cpu": engine_cpu,
        "requests": requests,
    }


def export_tree(rev: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "daemon"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the commit to compare with (its daemon package)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every stand request")
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--only", choices=("before", "after"), help="run one contender only")
    parser.add_argument("--wrap", default="", help="arguments before `-m daemon` (a profiler), split on spaces")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--keep", help="copy each run's log to this directory")
    args = parser.parse_args()
    history = generate_history(22, args.changes, weird_names=False)
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="e2e-trees-") as tmp_name, NeptuneStand() as stand:
        tmp = Path(tmp_name)
        trees = {"before": export_tree(args.rev, tmp / "before"), "after": ROOT}
        load_stand(stand, history)
        stand.request_latency_seconds = args.latency
        names = [args.only] if args.only else ["before", "after"]
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                clear_stand_graph(stand)
                result = run_once(trees[name], tmp / f"{name}-{rep}", stand, {}, args.wrap.split(), args.log_level)
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    (tmp / f"{name}-{rep}" / "daemon.log").replace(Path(args.keep) / f"{name}-{rep}.log")
                if not results[name]:
                    found = differences(history.reference, stand_graph(stand))
                    result["graph"] = "identical" if not found else "; ".join(found)
                results[name].append(result)
                print(name, rep, {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
    print(f"{history.n_records:,} changes, latency {args.latency * 1000:g} ms, median of {args.reps}:")
    for name in names:
        runs = results[name]
        line = ", ".join(
            f"{key} {median([r[key] for r in runs]):.2f}"
            for key in ("seconds", "wall", "daemon_cpu", "stand_cpu", "engine_cpu")
        )
        print(f"  {name:6} {line}; requests {runs[-1]['requests']}; graph {runs[0].get('graph')}")


if __name__ == "__main__":
    main()
