"""Before/after of the pipeline's CPU stages: this tree against an earlier commit, side by side in one process.

Room in the design: the comparison behind the per-step numbers in docs/performance.md's pipeline-cost notes
(`python -m tests.bench.compare_trees REV [--input dynamodb dynamodb_plain neptune] [--passes 7]`), and behind
the pipeline-cost section's comparison with round 1's tree (`side_by_side`). The commit's `daemon` package is
exported (`git archive`) into a temporary directory and imported as `daemon_before` (its own imports
rewritten), next to this tree's `daemon`. Both get the same stream pages (10,000 records, as `pipeline_cost`
builds them); every page is parsed by each tree's own botocore response parser (its model extras, and its
parser factory: `daemon.aws_parsers` where the tree has one, aiobotocore's otherwise), then translated, by one
and then the other (the order flips every pass); every window of 8 pages is planned and serialised by both on a
serialise-only sink; CPU time (`time.process_time`) is summed per stage. Prints the median over the passes, CPU
µs per change, and the bytes both sinks serialised (equal when both trees build the same requests).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from daemon.cli import GC_THRESHOLDS
from tests.bench._common import median
from tests.bench.pipeline_cost import WINDOW_PAGES, input_pages
from tests.bench.report import ROOT

STAGES = ("parse", "translate", "plan", "serialise")
OPERATIONS = {"neptune": ("neptunedata", "GetPropertygraphStream"), "dynamodb": ("dynamodbstreams", "GetRecords")}
_IMPORT = re.compile(r"\b(from|import) daemon(\.|\b)")


def export_package(rev: str, into: Path, name: str = "daemon_before") -> None:
    """`daemon/` of `rev` as the package `name` under `into`."""
    archive = subprocess.run(["git", "archive", rev, "daemon"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "daemon").rename(into / name)
    for path in (into / name).rglob("*.py"):
        path.write_text(_IMPORT.sub(lambda m: f"{m[1]} {name}{m[2]}", path.read_text()))


class Contender:
    """One tree's translate -> plan -> serialise for one input."""

    def __init__(self, package: str, kind: str, pages: list[bytes], tmp: Path) -> None:
        def module(name: str) -> ModuleType:
            return importlib.import_module(f"{package}.{name}")

        self.package, self.kind = package, kind
        config, deadletter, base, cypher = (
            module("config"),
            module("deadletter"),
            module("sinks.base"),
            module("cypher"),
        )
        if kind == "neptune":
            self.translate_record = module("sources.pgjson").translate_record
        else:
            cfg = config.load_config(ROOT / "config" / "dynamodb-social.toml").sources[0]
            dead = deadletter.DeadLetterFile(tmp / f"{package}-source.jsonl")
            self.source = module("sources.dynamodb").DynamoDBStreamSource(cfg, dead_letters=dead)

        class Sink(base.GraphSink):  # type: ignore[name-defined,misc]
            kind = "serialise"

            def __init__(self) -> None:
                self.name, self.dialect, self.bytes_out = "serialise", cypher.neptune_dialect(), 0

            async def execute(self, statement: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
                body = orjson.dumps({"query": statement, "parameters": orjson.dumps({"rows": rows}).decode()})
                self.bytes_out += len(body)
                return []

            async def query(self, statement: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
                return []

            def classify(self, exc: BaseException) -> Any:
                return base.RETRY["connection"]

        self.sink = Sink()
        self.applier = base.PlanApplier(
            self.sink,
            source="bench",
            batch_size=500,
            concurrency=asyncio.Semaphore(4),
            retry=base.RetryPolicy(),
            dead_letters=deadletter.DeadLetterFile(tmp / f"{package}-apply.jsonl"),
        )
        self.planner = module("scheduler").Planner(self.sink.dialect, self.applier.lookup_edge_types, 200_000)
        self.pages = pages
        self.records_key = "records" if kind == "neptune" else "Records"
        self._parser, self._protocol, self._shape = _response_parser(
            package, *OPERATIONS["neptune" if kind == "neptune" else "dynamodb"]
        )

    async def parse(self, page: int) -> list[Any]:
        """A stream page's records as this tree's botocore client hands them over."""
        response = {"body": self.pages[page], "headers": {}, "status_code": 200, "context": {}}
        parsed = await self._parser.create_parser(self._protocol).parse(response, self._shape)
        records: list[Any] = parsed[self.records_key]
        return records

    async def translate(self, records: list[Any]) -> list[Any]:
        if self.kind == "neptune":
            return [self.translate_record(record) for record in records]
        return await self.source._translate("shardId-000", records)


def _response_parser(package: str, service: str, operation: str) -> tuple[Any, str, Any]:
    """(parser factory, protocol, output shape) as `package`'s clients parse `operation`: its model extras, and its own
    parser factory where it has one (`aws_parsers`, orjson on stream bodies) or aiobotocore's."""
    import botocore.session
    from aiobotocore.parsers import AioResponseParserFactory

    extras = importlib.import_module(f"{package}.aws").MODEL_EXTRAS
    try:
        factory = importlib.import_module(f"{package}.aws_parsers").ResponseParserFactory()
    except ModuleNotFoundError:
        factory = AioResponseParserFactory()
    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.insert(0, str(extras))
    model = session.get_service_model(service)
    return factory, model.metadata["protocol"], model.operation_model(operation).output_shape


async def compare(contenders: list[Contender], passes: int) -> dict[str, dict[str, float]]:
    """Median CPU µs per change of each stage, per contender's package."""
    clock = time.process_time
    per_pass: dict[str, dict[str, list[float]]] = {c.package: {s: [] for s in STAGES} for c in contenders}
    for number in range(passes):
        order = contenders if number % 2 == 0 else contenders[::-1]
        seconds = {c.package: dict.fromkeys(STAGES, 0.0) for c in contenders}
        windows: dict[str, list[Any]] = {c.package: [] for c in contenders}
        changes = dict.fromkeys(windows, 0)
        pages = len(contenders[0].pages)
        for page in range(pages):
            for c in order:
                t0 = clock()
                records = await c.parse(page)
                t1 = clock()
                windows[c.package].extend(await c.translate(records))
                seconds[c.package]["parse"] += t1 - t0
                seconds[c.package]["translate"] += clock() - t1
                del records
            if (page + 1) % WINDOW_PAGES and page + 1 < pages:
                continue
            for c in order:
                window, windows[c.package] = windows[c.package], []
                changes[c.package] += len(window)
                t0 = clock()
                plan = await c.planner.plan(window)
                t1 = clock()
                await c.applier.apply(plan)
                seconds[c.package]["plan"] += t1 - t0
                seconds[c.package]["serialise"] += clock() - t1
        for package, stages in seconds.items():
            for stage, spent in stages.items():
                per_pass[package][stage].append(spent / changes[package] * 1e6)
    return {package: {s: median(v) for s, v in stages.items()} for package, stages in per_pass.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.compare_trees", description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the earlier commit, e.g. main or 2e08269")
    parser.add_argument("--input", nargs="+", default=["dynamodb", "dynamodb_plain", "neptune"])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--records", type=int, default=10_000)
    args = parser.parse_args(argv)
    results = side_by_side(args.rev, args.input, args.passes, args.records)
    for kind, result in results.items():
        print(f"{kind}: CPU µs per change, median of {args.passes} passes ({args.rev} -> this tree)")
        for package, stages in result.items():
            cells = "  ".join(f"{s} {stages[s]:6.2f}" for s in STAGES)
            print(f"  {package:14s} {cells}  sum {stages['sum']:6.2f}  bytes {int(stages['bytes']):,}")
    return 0


def side_by_side(
    rev: str, kinds: list[str], passes: int, records: int = 10_000
) -> dict[str, dict[str, dict[str, float]]]:
    """Per input kind, per package (`daemon_before` = `rev`, `daemon` = this tree): median CPU µs per change of
    each stage, their `sum`, and the `bytes` its sink serialised."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        export_package(rev, Path(tmp))
        sys.path.insert(0, tmp)
        try:
            for kind in kinds:
                pages = input_pages(kind, records)
                contenders = [Contender(p, kind, pages, Path(tmp)) for p in ("daemon_before", "daemon")]
                gc.collect()
                gc.freeze()  # the inputs, as pipeline_cost does
                thresholds = gc.get_threshold()
                gc.set_threshold(*GC_THRESHOLDS)
                try:
                    result = asyncio.run(compare(contenders, passes))
                finally:
                    gc.set_threshold(*thresholds)
                    gc.unfreeze()
                out[kind] = {
                    c.package: {**result[c.package], "sum": sum(result[c.package].values()), "bytes": c.sink.bytes_out}
                    for c in contenders
                }
        finally:
            sys.path.remove(tmp)
            for name in [m for m in sys.modules if m == "daemon_before" or m.startswith("daemon_before.")]:
                del sys.modules[name]
    return out


if __name__ == "__main__":
    sys.exit(main())
