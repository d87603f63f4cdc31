"""A source that feeds event sinks only (`sinks = ["archive"]`, no graph sink): the pipeline the supervisor runs
for it in place of `daemon.pipeline.Pipeline`.

There is no graph branch: the `FanOutSource` (with `graph=False`) reads the stream once from the lowest
checkpoint of its event sinks (`SOURCE@SINK`; the source's own key holds no row) and hands each branch what it
has not applied, exactly as beside a graph sink (docs/events.md "Fan-out"). This class gives the supervisor what
it reads of a pipeline: `run` (until the source ends or a drain; a drain lets each event sink finish its
window), `caught_up` (every event sink delivered and checkpointed everything read), `positions` (the low
watermark of the event sinks, where a restart reads from), `status()`, and the source's metrics: the
checkpoint gauges follow that low watermark, and `stream_latency_seconds` is the lag of the slowest event sink,
computed at each scrape (0 once every one is caught up).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

from daemon.events.fanout import FanOutSource
from daemon.model import SHARD_END, ChangeBatch, Position
from daemon.observability import METRICS
from daemon.pipeline import CheckpointStore, Pipeline, _position_text

FORGET_SECONDS = 0.5  # how often finished shards past the retention are looked for while it runs


class EventOnlyPipeline(Pipeline):
    """One source into event sinks only (module docstring); `applier` and `planner` are None."""

    def __init__(self, source: FanOutSource, checkpoints: CheckpointStore | None, *, queue_size: int) -> None:
        source.graph = False
        source.on_progress = self._progressed
        super().__init__(source, None, None, checkpoints, queue_size=queue_size, window_max_changes=1)  # type: ignore[arg-type]
        self.source: FanOutSource = source

    @property  # type: ignore[override]
    def caught_up(self) -> bool:
        """Every event sink delivered and checkpointed everything read, at the head of the stream."""
        return self.source.idle

    @caught_up.setter
    def caught_up(self, _value: bool) -> None:  # Pipeline.__init__ sets it; it is computed here
        pass

    @property  # type: ignore[override]
    def changes_applied(self) -> int:
        """Changes every event sink has taken (delivered, routed away, or in an open archive window) since start."""
        return min((lane.changes_taken for lane in self.source.lanes), default=0)

    @changes_applied.setter
    def changes_applied(self, _value: int) -> None:
        pass

    async def stored_positions(self) -> dict[str, Position]:
        """The lowest stored checkpoint of the event sinks per partition (a partition some sink has no row for is
        read from the source's `start`, and left out)."""
        assert self.checkpoints is not None
        rows = [await self.checkpoints.load(lane.key) for lane in self.source.lanes]
        common = set.intersection(*(set(r) for r in rows)) if rows else set()
        return {p: min(r[p] for r in rows) for p in common}

    async def run(self) -> None:
        """Run the fan-out until the source ends (a file read to its end) or a drain; raises what it raised."""
        assert self.checkpoints is not None
        self.positions = await self.stored_positions()
        self._progressed(dict(self.positions))
        unused: asyncio.Queue[ChangeBatch] = asyncio.Queue(maxsize=1)  # no graph branch: nothing is put on it
        task = asyncio.create_task(self.source.run(unused, {}), name=f"source:{self.name}")
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while not task.done() and not stop.done():
                await asyncio.wait({task, stop}, timeout=FORGET_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                self._forget_finished()
            if task.done():
                task.result()  # raises what the source or an event sink raised
                self.crashed = None
        finally:
            stop.cancel()
            task.cancel()  # a drain: the fan-out lets each event sink finish the window it is delivering
            with suppress(asyncio.CancelledError):
                await task

    def _progressed(self, common: dict[str, Position]) -> None:
        """Every event sink has these positions: the source's low watermark moved."""
        self.positions.update(common)
        self.crashed = None
        for partition, position in common.items():
            self._export_checkpoint(partition, position)
            if position == SHARD_END:  # a finished shard: its series goes, so label values stay bounded
                with suppress(KeyError):
                    METRICS.stream_latency.remove(self.name, partition)
            else:
                METRICS.stream_latency.labels(source=self.name, partition=partition).set_function(self._current_lag)

    def _forget_finished(self) -> None:
        """A DynamoDB source's finished shards past the retention: each event sink deletes its rows (the graph
        pipeline does this after each window; here the source has no rows of its own)."""
        gone = self.source.take_forgotten()
        for partition in gone:
            self.positions.pop(partition, None)
            with suppress(KeyError):
                METRICS.stream_latency.remove(self.name, partition)

    def _current_lag(self) -> float:
        return 0.0 if self.caught_up else self._lag()

    def _lag(self) -> float:
        """Seconds the slowest event sink is behind (its oldest change in delivery, else its newest delivered)."""
        now, lag = time.time(), 0.0
        for lane in self.source.lanes:
            behind = lane.delivering_commit_ms or lane.last_commit_ms
            if behind and not lane.idle:
                lag = max(lag, now - behind / 1000)
        return lag

    def status(self) -> dict[str, Any]:
        lanes = self.source.lanes
        return {
            "source": self.name,
            "state": "standby" if self.standby else self.source.state,
            "position": _position_text(self.positions),
            "caught_up": self.caught_up,
            "lag_seconds": round(self._current_lag(), 3),
            "changes_applied": self.changes_applied,
            "sink": None,
            "sink_healthy": all(lane.delivery.healthy for lane in lanes),
            "restarting_after": self.crashed,
        }
