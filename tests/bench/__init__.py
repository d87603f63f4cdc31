"""The performance benchmarks of issue 6: `python -m tests.bench [--quick] [--only KEY ...] [--no-write]`.

Each module with `run(quick: bool) -> Section` is one section of `docs/performance.md` (see `report.py`).
"""
