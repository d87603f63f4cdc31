"""One pipeline stage under callgrind, for this tree or an earlier commit: where its instructions go, by function.

Room in the design: the profiler's view beside `stage_instructions` (which counts every stage of two trees side by
side); this one runs a single stage for `callgrind_annotate` to break down. The pages are those of `compare_trees`
(and `pipeline_cost`); each is parsed and translated by the chosen tree, every window of 8 pages planned and
serialised on the same serialise-only sink, for `--passes` passes. Only the chosen stage of the passes after the
first (warm caches) runs inside `operator.call`, the function callgrind is told to count in:

    valgrind --tool=callgrind --dump-instr=no --collect-atstart=no --toggle-collect=_operator_call \\
        --callgrind-out-file=/tmp/cg.out .venv/bin/python -m tests.bench.stage_profile \\
        --input dynamodb_plain --stage plan [--rev f931ee7] [--cache /tmp/pages]
    callgrind_annotate /tmp/cg.out | head

The script prints the number of changes counted; instructions per change = the total `Ir` / that number.
The collector stays on with the daemon's thresholds (its passes count in the stage that triggers them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import operator
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

from daemon.cli import GC_THRESHOLDS
from tests.bench.compare_trees import STAGES, Contender, export_package
from tests.bench.pipeline_cost import WINDOW_PAGES, input_pages


def run(contender: Contender, stage: str, passes: int) -> int:
    """Runs the passes; returns the number of changes whose `stage` was counted."""
    loop = asyncio.new_event_loop()
    run_until = loop.run_until_complete
    counted = 0
    pages = len(contender.pages)
    for number in range(passes):
        counting = number > 0
        window: list[Any] = []
        for page in range(pages):
            if counting and stage == "parse":
                records = operator.call(run_until, contender.parse(page))
            else:
                records = run_until(contender.parse(page))
            if counting and stage == "translate":
                window.extend(operator.call(run_until, contender.translate(records)))
            else:
                window.extend(run_until(contender.translate(records)))
            del records
            if (page + 1) % WINDOW_PAGES and page + 1 < pages:
                continue
            if counting and stage == "plan":
                plan = operator.call(run_until, contender.planner.plan(window))
            else:
                plan = run_until(contender.planner.plan(window))
            if counting and stage == "serialise":
                operator.call(run_until, contender.applier.apply(plan))
            else:
                run_until(contender.applier.apply(plan))
            if counting:
                counted += len(window)
            window = []
    loop.close()
    return counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.stage_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--input", choices=("dynamodb", "dynamodb_plain", "neptune"), default="dynamodb_plain")
    parser.add_argument("--stage", choices=STAGES, default="plan")
    parser.add_argument("--rev", help="an earlier commit to count instead of this tree")
    parser.add_argument("--records", type=int, default=8_000)
    parser.add_argument("--passes", type=int, default=2, help="the first pass is not counted")
    parser.add_argument("--cache", type=Path, help="a directory keeping the generated pages between runs")
    args = parser.parse_args(argv)
    cached = args.cache / f"{args.input}-{args.records}.pickle" if args.cache else None
    if cached is not None and cached.exists():
        pages = pickle.loads(cached.read_bytes())
    else:
        pages = input_pages(args.input, args.records)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(pickle.dumps(pages))
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        package = "daemon"
        if args.rev:
            export_package(args.rev, Path(tmp))
            sys.path.insert(0, tmp)
            package = "daemon_before"
        contender = Contender(package, "neptune" if args.input == "neptune" else "dynamodb", pages, Path(tmp))
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        counted = run(contender, args.stage, args.passes)
    print(f"{args.input} {args.stage} {args.rev or 'this tree'}: {counted} changes counted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
