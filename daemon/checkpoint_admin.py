"""`graph-replicator checkpoint show|set|rewind|reset`: read and move the stored positions of a config's sources.

Room in the design: an operator's door into the checkpoint stores (`daemon.checkpoint`, `daemon.checkpoint_dynamodb`)
that keeps their ownership rules. A position is only ever changed by whoever may write it:

* SQLite: the holder of the data-directory lock (`daemon.datadir`). A change takes the lock, so it is refused
  (exit 4, naming the daemon's pid) while a daemon runs on the directory. `show` reads the file read-only and
  works beside a running daemon.
* DynamoDB: the owner of the lease. A change is refused (exit 4, naming the owners) while any lease of the
  source is owned by a live instance: an owned lease is watched for `lease_duration_seconds`, and one whose
  counter moved is alive (`--force` skips the watch, loudly). Each item is then written conditionally on the
  counter seen; the write bumps the counter and frees the lease, so an owner that was only paused finds its
  lease moved (`LeaseLost`) and can no longer overwrite the new position.

An event sink's rows (`SOURCE@SINK`, docs/events.md) are named with `--source SOURCE@SINK` and follow the same
rules: positions typed by the source's kind; SQLite changes under the lock; on DynamoDB the watch is of the
source's leases (the event sink's rows are written under them), and the row is written in one transaction with
the source's lease of that partition, whose counter it bumps (freeing it), so a paused owner cannot overwrite it.

Positions are typed per source kind: neptune and file sources `commitNum[:opNum]` (the records' own event ids; a
bare commitNum stands before that commit's first operation, `(N, 0)`, which the stream reader reads from
`AT_SEQUENCE_NUMBER N/1`), DynamoDB sources a sequence number, `TRIM_HORIZON` or `SHARD_END` for one shard
(`--partition`). Every change is logged (structlog, `checkpoint changed` with old and new positions) and printed.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import orjson
import structlog

from daemon.config import Config, DynamoDBCheckpointConfig, DynamoDBSourceConfig, SourceConfig
from daemon.events.fanout import LANE_SEPARATOR, lane_key
from daemon.leases import Lease
from daemon.model import SHARD_END, SHARD_START, Position


def _log() -> Any:
    """A logger bound to the logging configured now (the command configures it at each call; a module-level
    logger caches the first configuration's output stream)."""
    return structlog.get_logger("daemon.checkpoint_admin")


EXIT_USAGE, EXIT_BUSY, EXIT_FAILED = 2, 4, 1
SEQUENCE_WIDTH = 40  # as daemon.sources.dynamodb pads DynamoDB sequence numbers
_COMMIT = re.compile(r"(\d+)(?::(\d+))?")


class AdminError(Exception):
    """A refusal or failure with its exit code; the message is printed as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class Row:
    """One stored (source, partition) position, with the lease fields of the DynamoDB store."""

    source: str
    partition: str
    position: Position | None
    updated_at: float | None = None
    owner: str | None = None
    counter: int | None = None
    heartbeat: float | None = None
    pending_owner: str | None = None
    parents: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        out = asdict(self)
        out["position"] = list(self.position) if self.position is not None else None
        out["parents"] = list(self.parents)
        out["position_text"] = position_text(self.position)
        return out


# ------------------------------------------------------------------------------------------- positions


def is_shard_source(source: SourceConfig) -> bool:
    return isinstance(source, DynamoDBSourceConfig)


def parse_position(source: SourceConfig, text: str) -> Position:
    """The stored form of a position typed by the operator; AdminError saying the syntax otherwise."""
    text = text.strip()
    if is_shard_source(source):
        upper = text.upper()
        if upper == "SHARD_END":
            return SHARD_END
        if upper == "TRIM_HORIZON":
            return SHARD_START
        if text.isdigit() and 0 < len(text.lstrip("0")) <= SEQUENCE_WIDTH:
            return (text.lstrip("0").zfill(SEQUENCE_WIDTH),)
        raise AdminError(
            f"{text!r} is not a position of DynamoDB source {source.name!r}: expected a sequence number "
            "(up to 40 digits), TRIM_HORIZON (read the shard from its start) or SHARD_END (the shard is done)"
        )
    match = _COMMIT.fullmatch(text)
    if match is None or int(match.group(1)) < 1:
        raise AdminError(
            f"{text!r} is not a position of {source.kind} source {source.name!r}: expected commitNum[:opNum], "
            'e.g. "1200:3" (continue after operation 3 of commit 1200) or "1200" (continue from the start of '
            "commit 1200)"
        )
    return (int(match.group(1)), int(match.group(2) or 0))


def position_text(position: Position | None) -> str:
    """A stored position as the operator types it."""
    if position is None:
        return "-"
    if position == SHARD_END:
        return "SHARD_END"
    if position == SHARD_START:
        return "TRIM_HORIZON"
    if len(position) == 1:
        return str(position[0]).lstrip("0") or "0"
    return ":".join(map(str, position))


def rewound(source: SourceConfig, current: Position | None, commits: int) -> Position:
    """`current` moved back so that the last `commits` commits are read again: (c, o) -> (c - commits + 1, 0)."""
    if is_shard_source(source):
        raise AdminError(
            f"rewind counts Neptune commits; DynamoDB source {source.name!r} has none: use "
            "`checkpoint set --partition SHARD TRIM_HORIZON` (or a sequence number) instead"
        )
    if current is None:
        raise AdminError(f"source {source.name!r} has no checkpoint to rewind (it reads from its `start`)")
    commit = int(current[0]) - commits + 1
    if commit < 1:
        raise AdminError(
            f"cannot rewind {commits} commits from commit {current[0]}: give at most {current[0]}, or use "
            "`checkpoint reset` to read from the source's `start` again"
        )
    return (commit, 0)


# ------------------------------------------------------------------------------------------- stores


class SQLiteAdmin:
    """The SQLite store: read-only for `show`, under the data-directory lock for changes."""

    def __init__(self, config: Config) -> None:
        assert config.checkpoint_path is not None
        self.config = config
        self.path = config.checkpoint_path
        self.where = f"SQLite file {self.path}"

    async def rows(self, sources: list[str]) -> list[Row]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)
        try:
            marks = ",".join("?" * len(sources))
            found = db.execute(
                f"SELECT source, partition, position, updated_at FROM checkpoints WHERE source IN ({marks}) "
                "ORDER BY source, partition",
                sources,
            ).fetchall()
        except sqlite3.OperationalError as exc:  # no table yet: nothing was ever checkpointed
            if "no such table" in str(exc):
                return []
            raise
        finally:
            db.close()
        return [Row(s, p, tuple(orjson.loads(pos)), updated) for s, p, pos, updated in found]

    async def change(
        self, source: str, writes: dict[str, Position | None], *, force: bool, out: TextIO, key: str | None = None
    ) -> None:
        """Write (or, for None, delete) each partition's position of `source` (or of its row `key`, an event sink's
        `SOURCE@SINK`), holding the data-directory lock."""
        from daemon.checkpoint import SQLiteCheckpointStore
        from daemon.datadir import DataDirBusy, DataDirError, DataDirLock

        try:
            lock = DataDirLock(self.config.daemon.resolved_data_dir, "graph-replicator checkpoint").acquire()
        except DataDirBusy as exc:
            raise AdminError(
                f"refused: {exc.reason}; stop the daemon first (positions change only while nobody replicates)",
                EXIT_BUSY,
            ) from None
        except DataDirError as exc:
            raise AdminError(str(exc)) from None
        try:
            store = SQLiteCheckpointStore(self.path)
            try:
                gone = [p for p, pos in writes.items() if pos is None]
                kept = {p: pos for p, pos in writes.items() if pos is not None}
                if gone:
                    await store.forget(key or source, gone)
                if kept:
                    await store.save_many(key or source, kept)
            finally:
                store.close()
        finally:
            lock.release()


class DynamoDBAdmin:
    """The DynamoDB store: leases shown; changes only on leases nobody live owns, conditional on their counter."""

    def __init__(self, config: Config, stack: AsyncExitStack, *, sleep: Callable[[float], Any] = asyncio.sleep):
        assert isinstance(config.checkpoint, DynamoDBCheckpointConfig)
        self.cfg = config.checkpoint
        self.config = config
        self.stack = stack
        self.sleep = sleep
        self.where = f"DynamoDB table {self.cfg.table}"
        self._store: Any = None

    def _sharded(self, source: str) -> bool:
        """A DynamoDB source: its shards are shared, its event sinks' positions live on the shards' lease items."""
        return any(s.name == source and is_shard_source(s) for s in self.config.sources)

    async def store(self, *, create: bool) -> Any:
        from daemon.aws import open_client
        from daemon.checkpoint_dynamodb import DynamoDBCheckpointStore

        if self._store is None:
            endpoint = str(self.cfg.endpoint) if self.cfg.endpoint else None
            client = await open_client(
                self.stack, "dynamodb", endpoint=endpoint, region=self.cfg.region, timeout_seconds=10.0
            )
            self._store = DynamoDBCheckpointStore(client, self.cfg.table)
        if create:
            await self._store.ensure_table()
        return self._store

    async def rows(self, sources: list[str]) -> list[Row]:
        from daemon.aws import error_code

        store = await self.store(create=False)
        rows: list[Row] = []
        for source in sources:
            owner, _, sink = source.partition(LANE_SEPARATOR)
            try:
                if sink and self._sharded(owner):  # a shard's event sink position is on the shard's lease item
                    leases = [
                        Lease(
                            source,
                            lease.partition,
                            lease.owner,
                            lease.counter,
                            lease.heartbeat,
                            lease.parents,
                            lease.branches[sink],
                            lease.pending_owner,
                        )
                        for lease in await store.list_leases(owner)
                        if sink in lease.branches
                    ]
                else:
                    leases = await store.list_leases(source)
            except Exception as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return []  # no table yet: no daemon ran with this store
                raise
            rows += [
                Row(
                    lease.source,
                    lease.partition,
                    lease.position,
                    None,
                    lease.owner,
                    lease.counter,
                    lease.heartbeat or None,
                    lease.pending_owner,
                    lease.parents,
                )
                for lease in sorted(leases, key=lambda lease: lease.partition)
            ]
        return rows

    async def change(
        self, source: str, writes: dict[str, Position | None], *, force: bool, out: TextIO, key: str | None = None
    ) -> None:
        """Write (or delete) each partition's position of `source`, or of its row `key` (an event sink's
        `SOURCE@SINK`) together with the source's lease; refused while a live instance owns a lease of `source`."""
        from daemon.checkpoint_dynamodb import watch_owners
        from daemon.leases import LeaseLost

        store = await self.store(create=True)
        seen = {lease.partition: lease for lease in await store.list_leases(source)}
        owned = {p: lease for p, lease in seen.items() if lease.owner}
        if owned and force:
            print(
                f"WARNING: --force: not checking whether the owners of {len(owned)} lease(s) of {source!r} are alive "
                f"({_owners(owned.values())}); a live owner loses its lease at its next renewal",
                file=sys.stderr,
            )
            _log().warning("checkpoint change forced over owned leases", source=source, owners=_owners(owned.values()))
        elif owned:
            wait = self.cfg.lease_duration_seconds
            print(
                f"{len(owned)} lease(s) of {source!r} have an owner ({_owners(owned.values())}): watching them "
                f"for lease_duration_seconds = {wait:g} s to see whether it is alive",
                file=out,
            )
            alive, again = await watch_owners(store, source, wait, sleep=self.sleep)
            if alive:
                raise AdminError(
                    f"refused: source {source!r} is being replicated: lease(s) owned by {_owners(alive)} were renewed "
                    f"within {wait:g} s; stop those daemons first (or, knowing they are gone, use --force)",
                    EXIT_BUSY,
                )
            seen = again
        branch = {r.partition: r for r in await self.rows([key])} if key is not None else {}
        for partition, position in writes.items():
            lease = seen.get(partition)
            counter = lease.counter if lease is not None else None
            try:
                if key is None:
                    await store.overwrite(source, partition, position, counter)
                else:
                    row = branch.get(partition)
                    await store.overwrite_branch(
                        source, key, partition, position, row.counter if row is not None else None, counter
                    )
            except LeaseLost as exc:
                raise AdminError(
                    f"refused: the lease of {source!r} partition {partition!r} changed while it was being written "
                    f"(a daemon took or renewed it; owner now {exc.actual_owner!r}): that partition was not changed",
                    EXIT_BUSY,
                ) from None


def _owners(leases: Any) -> str:
    names = sorted({lease.owner for lease in leases if lease.owner})
    return ", ".join(names)


# ------------------------------------------------------------------------------------------- commands


@dataclass(slots=True)
class Request:
    action: str  # show | set | rewind | reset
    source: str | None = None
    partition: str | None = None
    position: str | None = None
    commits: int | None = None
    yes: bool = False
    force: bool = False
    fmt: str = "table"


def _sources(config: Config, name: str | None, *, one: bool) -> list[SourceConfig]:
    if name is not None:
        found = [s for s in config.sources if s.name == name]
        if not found:
            raise AdminError(f"no source named {name!r} (sources: {', '.join(s.name for s in config.sources)})")
        return found
    if one and len(config.sources) != 1:
        raise AdminError(
            f"the config has several sources ({', '.join(s.name for s in config.sources)}): name one with --source"
        )
    return list(config.sources)


def _target(config: Config, name: str | None) -> tuple[SourceConfig, str | None]:
    """The source a change is for and, for `SOURCE@SINK`, the key of that event sink's rows (else None)."""
    if name is None or LANE_SEPARATOR not in name:
        (source,) = _sources(config, name, one=True)
        if source.sink is None:
            keys = ", ".join(lane_key(source.name, e) for e in source.event_sinks)
            raise AdminError(f"source {source.name!r} feeds event sinks only: its checkpoints are its event sinks' "
                             f"(--source {keys})")  # fmt: skip
        return source, None
    source_name, sink = name.split(LANE_SEPARATOR, 1)
    (source,) = _sources(config, source_name, one=True)
    if sink not in source.event_sinks:
        sinks = ", ".join(source.event_sinks) or "none"
        raise AdminError(f"source {source.name!r} has no event sink named {sink!r} (its event sinks: {sinks})")
    return source, lane_key(source.name, sink)


def _partition(source: SourceConfig, partition: str | None) -> str:
    if is_shard_source(source):
        if not partition:
            raise AdminError(
                f"source {source.name!r} is a DynamoDB source with one position per shard: name the shard with "
                "--partition (see `checkpoint show`)"
            )
        return partition
    if partition:
        raise AdminError(f"{source.kind} source {source.name!r} has one partition: leave --partition out")
    return ""


async def run(config: Config, request: Request, out: TextIO, *, sleep: Callable[[float], Any] = asyncio.sleep) -> int:
    """Carry out one `checkpoint` subcommand; AdminError for refusals."""
    async with AsyncExitStack() as stack:
        admin: SQLiteAdmin | DynamoDBAdmin
        if isinstance(config.checkpoint, DynamoDBCheckpointConfig):
            admin = DynamoDBAdmin(config, stack, sleep=sleep)
        else:
            admin = SQLiteAdmin(config)
        if request.action == "show":
            sources = _sources(config, request.source, one=False)
            # A source's event sinks checkpoint under SOURCE@SINK (docs/events.md): shown with it.
            rows = await admin.rows(
                [key for s in sources for key in (s.name, *(lane_key(s.name, e) for e in s.event_sinks))]
            )
            if request.partition is not None:
                rows = [r for r in rows if r.partition == request.partition]
            _show(rows, sources, admin, request.fmt, out)
            return 0
        source, key = _target(config, request.source)
        if key is not None and isinstance(admin, DynamoDBAdmin) and is_shard_source(source):
            raise AdminError(
                f"{key!r}: changing an event sink's positions of a DynamoDB source on the DynamoDB store is not "
                "available yet (they live on the shards' lease items); `show` lists them"
            )
        shown = key or source.name
        current = {r.partition: r.position for r in await admin.rows([shown])}
        writes: dict[str, Position | None]
        if request.action == "reset":
            if request.partition is not None:
                current = {p: pos for p, pos in current.items() if p == _partition(source, request.partition)}
            if not current:
                print(f"source {shown!r} has no stored positions in the {admin.where}: nothing to reset", file=out)
                return 0
            if not request.yes:
                listing = ", ".join(f"{p or '-'} at {position_text(pos)}" for p, pos in sorted(current.items()))
                then = (
                    "the next run reads from the source's `start` again"
                    if key is None
                    else "the next run reads the source from its `start` again for this event sink"
                )
                raise AdminError(
                    f"reset deletes {len(current)} stored position(s) of {shown!r} ({listing}); {then}. Add --yes "
                    "to do it"
                )
            writes = dict.fromkeys(current)
        else:
            partition = _partition(source, request.partition)
            if request.action == "set":
                assert request.position is not None
                new = parse_position(source, request.position)
            else:
                assert request.commits is not None
                new = rewound(source, current.get(partition), request.commits)
            writes = {partition: new}
        await admin.change(source.name, writes, force=request.force, out=out, key=key)
        for partition, new in writes.items():
            old = current.get(partition)
            _log().info(
                "checkpoint changed",
                action=request.action,
                source=shown,
                partition=partition,
                old=list(old) if old is not None else None,
                new=list(new) if new is not None else None,
                store=admin.where,
            )
            what = "deleted" if new is None else f"{position_text(old)} -> {position_text(new)}"
            part = f" partition {partition!r}" if partition else ""
            print(f"source {shown!r}{part}: {what} ({admin.where})", file=out)
        return 0


def _show(rows: list[Row], sources: list[SourceConfig], admin: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(orjson.dumps([r.json() for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    leased = isinstance(admin, DynamoDBAdmin)
    print(f"# {admin.where}", file=out)
    header = ["source", "partition", "position"]
    if leased:
        header += ["owner", "counter", "heartbeat", "pending owner"]
    else:
        header += ["updated"]
    table = [header]
    now = time.time()
    for r in rows:
        line = [r.source, r.partition or "-", position_text(r.position)]
        if leased:
            beat = f"{now - r.heartbeat:.0f}s ago" if r.heartbeat else "-"
            line += [r.owner or "(free)", str(r.counter), beat, r.pending_owner or "-"]
        else:
            line += [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.updated_at)) + "Z" if r.updated_at else "-"]
        table.append(line)
    shown = {r.source for r in rows}
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for s in sources:
        if s.name not in shown:
            print(f"source {s.name!r}: no stored position (the next run reads from its `start`)", file=out)
