"""What one benchmark hands the report: a titled table, the command that reproduces it, notes and plots.

Room in the design: the shared contract of `tests/bench/`. Every benchmark module exposes
`run(quick: bool) -> Section`; the runner (`python -m tests.bench`) calls them in turn, prints each table and
writes `docs/performance.md` from the sections (plots are PNG files under `docs/performance/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLOTS = ROOT / "docs" / "performance"


@dataclass(slots=True)
class Target:
    """A target of issue 6 and whether this run met it (`met` None when not measured)."""

    text: str  # e.g. "<= 10 us per change"
    measured: str  # e.g. "7.9 us per change"
    met: bool | None


@dataclass(slots=True)
class Section:
    key: str  # short id, e.g. "pipeline_cost"
    title: str
    command: str  # the command that reproduces this section alone
    columns: list[str]
    rows: list[list[Any]]
    targets: list[Target] = field(default_factory=list)
    notes: str = ""  # markdown: where the time goes, what was tried and what it gained
    plots: list[Path] = field(default_factory=list)
