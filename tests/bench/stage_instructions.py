"""Instructions per change of each pipeline stage, this tree against an earlier commit, counted by cachegrind.

Room in the design: the load-independent twin of `compare_trees` (docs/performance.md's pipeline-cost notes count
steps in instructions because CPU time on the shared machine moves 10-30 % between identical runs):
`python -m tests.bench.stage_instructions [REV] [--input dynamodb dynamodb_plain neptune] [--records 10000]`.
The stages and their order are `compare_trees`' (a `Contender` of each tree, its own response parser; every page
parsed then translated, every window of `WINDOW_PAGES` pages planned then serialised; the inputs frozen and the
daemon's collector thresholds set first). Each contender runs in a child process under
`valgrind --tool=cachegrind --cache-sim=no` once per depth (nothing, parse, + translate, + plan, + serialise),
and a stage's cost is the difference between two depths, divided by the changes: start-up and imports cancel out.
Needs valgrind (Debian's `valgrind`); a run of 10,000 records takes a few minutes per contender and input.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.bench.compare_trees import STAGES, Contender, export_package
from tests.bench.pipeline_cost import WINDOW_PAGES, input_pages
from tests.bench.report import ROOT

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


async def _run_child(contender: Contender, depth: int) -> int:
    """Run the first `depth` stages over every page; the changes translated."""
    changes, window = 0, []
    pages = len(contender.pages)
    for page in range(pages):
        records = await contender.parse(page) if depth >= 1 else []
        if depth >= 2:
            window.extend(await contender.translate(records))
        if (page + 1) % WINDOW_PAGES and page + 1 < pages:
            continue
        changes += len(window)
        if depth >= 3:
            plan = await contender.planner.plan(window)
            if depth >= 4:
                await contender.applier.apply(plan)
        window = []
    return changes


def child(package: str, kind: str, depth: int, workdir: Path) -> None:
    from daemon.cli import GC_THRESHOLDS

    pages = pickle.loads((workdir / f"{kind}.pages").read_bytes())
    contender = Contender(package, kind, pages, workdir)
    gc.collect()
    gc.freeze()  # the inputs, as compare_trees does
    gc.set_threshold(*GC_THRESHOLDS)
    changes = asyncio.run(_run_child(contender, depth))
    print(f"changes {changes}")


def _count(package: str, kind: str, depth: int, workdir: Path) -> tuple[int, int]:
    """(instructions, changes) of one child run."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "tests.bench.stage_instructions",
        "--child",
        package,
        kind,
        str(depth),
        str(workdir),
    ]
    # a fixed hash seed: string hashes move dict probing, and so the counts, by a few thousand a run
    env = {**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{ROOT}", "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    refs = _REFS.search(done.stderr)
    changes = re.search(r"changes (\d+)", done.stdout)
    if refs is None or changes is None:
        raise RuntimeError(f"no instruction count in cachegrind's output:\n{done.stderr[-2000:]}")
    return int(refs[1].replace(",", "")), int(changes[1])


def measure(rev: str | None, kinds: list[str], records: int, jobs: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per input kind, per package (`daemon_before` = `rev`, `daemon` = this tree): instructions per change of
    each stage and their `sum`."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    packages = ["daemon"] if rev is None else ["daemon_before", "daemon"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp, ThreadPoolExecutor(jobs) as pool:
        workdir = Path(tmp)
        if rev is not None:
            export_package(rev, workdir)
        for kind in kinds:
            pages = input_pages(kind, records)
            (workdir / f"{kind}.pages").write_bytes(pickle.dumps(pages))
        runs = {
            (kind, package, depth): pool.submit(_count, package, kind, depth, workdir)
            for kind in kinds
            for package in packages
            for depth in range(len(STAGES) + 1)
        }
        for kind in kinds:
            out[kind] = {}
            for package in packages:
                counts = [runs[kind, package, depth].result() for depth in range(len(STAGES) + 1)]
                changes = counts[-1][1]
                stages = {s: (counts[i + 1][0] - counts[i][0]) / changes for i, s in enumerate(STAGES)}
                out[kind][package] = {**stages, "sum": sum(stages.values())}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], int(argv[3]), Path(argv[4]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.stage_instructions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("rev", nargs="?", help="an earlier commit to count beside this tree, e.g. f931ee7")
    parser.add_argument("--input", nargs="+", default=["dynamodb", "dynamodb_plain"])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2, help="child runs at once (instruction counts do not mind)")
    args = parser.parse_args(argv)
    results = measure(args.rev, args.input, args.records, args.jobs)
    for kind, result in results.items():
        print(f"{kind}: instructions per change ({args.records:,} records)")
        for package, stages in result.items():
            cells = "  ".join(f"{s} {stages[s]:8,.0f}" for s in STAGES)
            ratio = ""
            if package == "daemon" and "daemon_before" in result:
                ratio = f"  ({stages['sum'] / result['daemon_before']['sum']:.2f}x)"
            print(f"  {package:14s} {cells}  sum {stages['sum']:9,.0f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
