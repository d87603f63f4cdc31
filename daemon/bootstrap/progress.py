"""Bootstrap progress: a one-line progress display on a terminal, structured progress logs otherwise, metrics.

Room in the design: bootstrap step 5. The same counters feed all three: records read from the source (vertices
and edges, or quads), CSV (or N-Quads) rows and gzipped bytes written to S3, records the loader reports loaded
(of the rows written), changes applied through the sink. Metrics:
`graph_replicator_bootstrap_records_total{source, stage}` (stage `read`, `csv`, `loaded`, `applied`),
`graph_replicator_bootstrap_bytes_total`, `graph_replicator_bootstrap_stage_seconds`,
`graph_replicator_bootstrap_last_success_timestamp_seconds`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import structlog

from daemon.observability import METRICS

log = structlog.get_logger("daemon.bootstrap")


class Progress:
    def __init__(
        self,
        source: str,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        log_interval: float = 5.0,
        refresh_interval: float = 0.2,
    ) -> None:
        self.source = source
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.log_interval = log_interval if not self.tty else refresh_interval
        self.stage = "starting"
        self.vertices_read = 0
        self.edges_read = 0
        self.quads_read = 0  # RDF sources
        self.rows_written = 0
        self.files_written = 0
        self.bytes_written = 0
        self.loaded: dict[str, int] = {}  # loader job -> records loaded
        self.rows_to_load = 0
        self.applied = 0
        self.started = time.monotonic()
        self._stage_started = self.started
        self._last_emit = 0.0
        self._line_width = 0
        self._m_read = METRICS.bootstrap_records.labels(source=source, stage="read")
        self._m_csv = METRICS.bootstrap_records.labels(source=source, stage="csv")
        self._m_loaded = METRICS.bootstrap_records.labels(source=source, stage="loaded")
        self._m_applied = METRICS.bootstrap_records.labels(source=source, stage="applied")
        self._m_bytes = METRICS.bootstrap_bytes.labels(source=source)

    # -------------------------------------------------------------------------------------- counters

    def begin(self, stage: str) -> None:
        self.end_stage()
        self.stage = stage
        self._stage_started = time.monotonic()
        self.emit(force=True)

    def end_stage(self) -> float:
        """Record the wall time of the stage in progress; returns it."""
        seconds = time.monotonic() - self._stage_started
        if self.stage != "starting":
            METRICS.bootstrap_stage_seconds.labels(source=self.source, stage=self.stage).set(seconds)
        return seconds

    def read(self, vertices: int = 0, edges: int = 0, quads: int = 0) -> None:
        self.vertices_read += vertices
        self.edges_read += edges
        self.quads_read += quads
        self._m_read.inc(vertices + edges + quads)
        self.emit()

    def wrote_file(self, rows: int, nbytes: int) -> None:
        self.files_written += 1
        self.rows_written += rows
        self.bytes_written += nbytes
        self._m_csv.inc(rows)
        self._m_bytes.inc(nbytes)
        self.emit()

    def loader(self, job: str, records: int) -> None:
        before = self.loaded.get(job, 0)
        if records > before:
            self._m_loaded.inc(records - before)
            self.loaded[job] = records
        self.emit()

    def apply(self, changes: int) -> None:
        self.applied += changes
        self._m_applied.inc(changes)
        self.emit()

    # --------------------------------------------------------------------------------------- display

    def snapshot(self) -> dict[str, int | str | float]:
        return {
            "stage": self.stage,
            "vertices_read": self.vertices_read,
            "edges_read": self.edges_read,
            **({"quads_read": self.quads_read} if self.quads_read else {}),
            "csv_rows": self.rows_written,
            "csv_files": self.files_written,
            "bytes_uploaded": self.bytes_written,
            "loader_records": sum(self.loaded.values()),
            "loader_total": self.rows_to_load,
            "changes_applied": self.applied,
            "seconds": round(time.monotonic() - self.started, 1),
        }

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        read = self.vertices_read + self.edges_read + self.quads_read
        what = f"{self.quads_read:,} quads" if self.quads_read else f"{self.vertices_read:,} v {self.edges_read:,} e"
        parts = [f"bootstrap {self.source} [{self.stage}]", f"read {what}"]
        if read and self.stage == "snapshot":
            parts[-1] += f" ({read / max(elapsed, 1e-6):,.0f}/s)"
        if self.files_written:
            parts.append(
                f"csv {self.rows_written:,} rows, {self.files_written} files, {self.bytes_written / 1e6:,.1f} MB"
            )
        if self.loaded:
            parts.append(f"loaded {sum(self.loaded.values()):,}/{self.rows_to_load:,}")
        if self.applied:
            parts.append(f"applied {self.applied:,}")
        parts.append(f"{elapsed:,.0f} s")
        return " | ".join(parts)

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < self.log_interval:
            return
        self._last_emit = now
        if self.tty:
            text = self.line()
            pad = max(0, self._line_width - len(text))
            self._line_width = len(text)
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
        else:
            log.info("bootstrap progress", source=self.source, **self.snapshot())

    def finish(self) -> None:
        self.end_stage()
        if self.tty:
            self.emit(force=True)
            self.stream.write("\n")
            self.stream.flush()
