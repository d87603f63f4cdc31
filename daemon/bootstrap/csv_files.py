"""Snapshot records -> gzipped openCypher CSV files, rolled at a size, handed to an uploader as they fill up.

Room in the design: bootstrap step 3. Each vertex becomes a row of a node file and each edge a row of a
relationship file (`daemon.bootstrap.csv_format`); what a CSV cell cannot carry unambiguously goes to the
*residual* spool as ordinary change records, written through openCypher after the loader finishes:

* a vertex whose id is not CSV-safe, or that has no CSV-safe label, goes there whole (a node row needs an id,
  and a row without a label would get Neptune's default label `vertex`); so do the edges that touch it;
* an edge whose id, type or endpoint ids are not CSV-safe goes there whole;
* otherwise only the labels and properties that are not CSV-safe do (for an edge, with its `e` record, so the
  writer finds the loaded relationship by type).

A column has one type per file, so rows whose property types clash (`age` a `Long` here, a `String`
there) go to parallel tables, each its own file; past `max_tables` tables per kind the clashing properties
go to the residual instead, which bounds the number of files a flush writes. Tables of a kind are flushed
together once their rows reach `file_max_bytes` of CSV text: rendered and gzipped in a worker thread, then
handed to the uploader while the snapshot reader goes on; at most `max_pending` files wait for upload
(back-pressure on the reader). Buffered rows take several times their CSV size in memory (about ten times for
short rows), so `file_max_bytes` bounds the writer's memory too.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from daemon.bootstrap.csv_format import (
    NODE_SYSTEM_COLUMNS,
    RELATIONSHIP_SYSTEM_COLUMNS,
    encode_cell,
    encode_labels,
    id_ok,
    key_ok,
    label_ok,
    property_header,
    render_csv,
    type_ok,
    value_type,
)
from daemon.bootstrap.records import SnapshotEdge, SnapshotVertex, edge_changes
from daemon.bootstrap.spool import ChangeSpool
from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY, GraphChange, Position

NODES, RELATIONSHIPS = "nodes", "relationships"


@dataclass(slots=True)
class CsvFile:
    """One gzipped CSV file ready for upload; `name` is relative (`nodes/nodes-00001.csv.gz`)."""

    kind: str
    name: str
    rows: int
    csv_bytes: int
    data: bytes


@dataclass(slots=True)
class _Table:
    columns: dict[str, str] = field(default_factory=dict)  # key -> column type
    rows: list[tuple[list[str], dict[str, str]]] = field(default_factory=list)

    def fits(self, types: dict[str, str]) -> bool:
        columns = self.columns
        return all(columns.get(key, kind) == kind for key, kind in types.items())

    def render(self, system_header: tuple[str, ...]) -> str:
        keys = sorted(self.columns)
        header = [*system_header, *(property_header(k, self.columns[k]) for k in keys)]
        return render_csv(header, ([*system, *(cells.get(k, "") for k in keys)] for system, cells in self.rows))


@dataclass(slots=True)
class CsvStats:
    rows: dict[str, int] = field(default_factory=lambda: {NODES: 0, RELATIONSHIPS: 0})
    files: dict[str, int] = field(default_factory=lambda: {NODES: 0, RELATIONSHIPS: 0})
    csv_bytes: int = 0
    gzip_bytes: int = 0
    encode_seconds: float = 0.0  # rendering and compressing, in worker threads
    split_seconds: float = 0.0  # sorting records into rows and residual
    residual_vertices: int = 0  # vertices written whole through openCypher
    residual_edges: int = 0
    residual_changes: int = 0  # change records in the residual, whole elements included


class CsvSnapshotWriter:
    def __init__(
        self,
        upload: Callable[[CsvFile], Awaitable[None]],
        *,
        residual_vertices: ChangeSpool,
        residual_edges: ChangeSpool,
        file_max_bytes: int = 16 * 1024 * 1024,
        position: Position = (0, 0),
        compress_level: int = 1,
        max_pending: int = 2,
        max_tables: int = 4,
    ) -> None:
        self._upload = upload
        self.residual_vertices = residual_vertices
        self.residual_edges = residual_edges
        self.file_max_bytes = file_max_bytes
        self.position = position
        self.compress_level = compress_level
        self.max_tables = max_tables
        self.stats = CsvStats()
        self._tables: dict[str, list[_Table]] = {NODES: [], RELATIONSHIPS: []}
        self._pending_bytes = {NODES: 0, RELATIONSHIPS: 0}
        self._residual_ids: set[str] = set()  # vertices written whole through the residual
        self._slots = asyncio.Semaphore(max_pending)
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._seq = {NODES: 0, RELATIONSHIPS: 0}

    # ----------------------------------------------------------------------------------------- rows

    async def add_vertices(self, vertices: list[SnapshotVertex]) -> None:
        self._raise_failure()
        started = time.perf_counter()
        for vertex in vertices:
            self._add_vertex(vertex)
        self.stats.split_seconds += time.perf_counter() - started
        if self._pending_bytes[NODES] >= self.file_max_bytes:
            await self._flush(NODES)

    async def add_edges(self, edges: list[SnapshotEdge]) -> None:
        self._raise_failure()
        if self._tables[NODES]:  # the vertex pass is over: its last files need not wait in memory
            await self._flush(NODES)
        started = time.perf_counter()
        for edge in edges:
            self._add_edge(edge)
        self.stats.split_seconds += time.perf_counter() - started
        if self._pending_bytes[RELATIONSHIPS] >= self.file_max_bytes:
            await self._flush(RELATIONSHIPS)

    def _add_vertex(self, v: SnapshotVertex) -> None:
        position = self.position
        labels = [label for label in v.labels if label_ok(label)]
        if not id_ok(v.id) or not labels:
            self._residual_ids.add(v.id)
            self.stats.residual_vertices += 1
            changes = [GraphChange(VERTEX_LABEL, True, v.id, label, position=position) for label in v.labels]
            changes += [GraphChange(VERTEX_PROPERTY, True, v.id, k, x, position=position) for k, x in v.props.items()]
            self._residual(self.residual_vertices, changes)
            return
        residual = [
            GraphChange(VERTEX_LABEL, True, v.id, label, position=position) for label in v.labels if not label_ok(label)
        ]
        types, cells = self._cells(v.id, v.props, VERTEX_PROPERTY, residual)

        def clash(key: str) -> None:
            residual.append(GraphChange(VERTEX_PROPERTY, True, v.id, key, v.props[key], position=position))

        self._put(NODES, [v.id, encode_labels(labels)], types, cells, clash)
        if residual:
            self._residual(self.residual_vertices, residual)

    def _add_edge(self, e: SnapshotEdge) -> None:
        whole = (
            not id_ok(e.id)
            or not type_ok(e.type)
            or not id_ok(e.from_id)
            or not id_ok(e.to_id)
            or e.from_id in self._residual_ids
            or e.to_id in self._residual_ids
        )
        if whole:
            self.stats.residual_edges += 1
            self._residual(self.residual_edges, edge_changes(e, self.position))
            return
        residual: list[GraphChange] = []
        types, cells = self._cells(e.id, e.props, EDGE_PROPERTY, residual)

        def clash(key: str) -> None:
            residual.append(GraphChange(EDGE_PROPERTY, True, e.id, key, e.props[key], position=self.position))

        self._put(RELATIONSHIPS, [e.id, e.from_id, e.to_id, e.type], types, cells, clash)
        if residual:
            head = GraphChange(EDGE, True, e.id, e.type, None, e.from_id, e.to_id, position=self.position)
            self._residual(self.residual_edges, [head, *residual])

    def _cells(
        self, element_id: str, props: dict, kind: str, residual: list[GraphChange]
    ) -> tuple[dict[str, str], dict[str, str]]:
        types: dict[str, str] = {}
        cells: dict[str, str] = {}
        for key, value in props.items():
            column = value_type(value) if key_ok(key) else None
            if column is None:
                residual.append(GraphChange(kind, True, element_id, key, value, position=self.position))
            else:
                types[key] = column
                cells[key] = encode_cell(value, column)
        return types, cells

    def _put(
        self,
        kind: str,
        system: list[str],
        types: dict[str, str],
        cells: dict[str, str],
        clash: Callable[[str], None],
    ) -> None:
        tables = self._tables[kind]
        for table in tables:
            if table.fits(types):
                break
        else:
            if len(tables) < self.max_tables:
                table = _Table()
                tables.append(table)
            else:  # bounded file count: the clashing properties go to the residual instead
                table = tables[0]
                for key in [k for k, t in types.items() if table.columns.get(k, t) != t]:
                    del types[key], cells[key]
                    clash(key)
        table.columns.update(types)
        table.rows.append((system, cells))
        self.stats.rows[kind] += 1
        size = len(system) + len(cells) + 2
        for text in system:
            size += len(text)
        for text in cells.values():
            size += len(text)
        self._pending_bytes[kind] += size

    def _residual(self, spool: ChangeSpool, changes: list[GraphChange]) -> None:
        spool.add(changes)
        self.stats.residual_changes += len(changes)

    # ---------------------------------------------------------------------------------------- files

    async def _flush(self, kind: str) -> None:
        tables, self._tables[kind] = self._tables[kind], []
        self._pending_bytes[kind] = 0
        system_header = NODE_SYSTEM_COLUMNS if kind == NODES else RELATIONSHIP_SYSTEM_COLUMNS
        for table in tables:
            if not table.rows:
                continue
            self._seq[kind] += 1
            name = f"{kind}/{kind}-{self._seq[kind]:05d}.csv.gz"
            await self._slots.acquire()  # back-pressure: at most max_pending files rendered and not uploaded
            try:
                file = await asyncio.to_thread(self._encode, kind, name, table, system_header)
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._send(file), name=f"upload:{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _encode(self, kind: str, name: str, table: _Table, system_header: tuple[str, ...]) -> CsvFile:
        started = time.perf_counter()
        text = table.render(system_header).encode("utf-8")
        data = gzip.compress(text, compresslevel=self.compress_level)
        self.stats.encode_seconds += time.perf_counter() - started
        self.stats.files[kind] += 1
        self.stats.csv_bytes += len(text)
        self.stats.gzip_bytes += len(data)
        return CsvFile(kind, name, len(table.rows), len(text), data)

    async def _send(self, file: CsvFile) -> None:
        try:
            await self._upload(file)
        except BaseException as exc:
            if self._failure is None:
                self._failure = exc
            raise
        finally:
            self._slots.release()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Flush what is buffered and wait for every upload; raises the first upload failure."""
        for kind in (NODES, RELATIONSHIPS):
            await self._flush(kind)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._raise_failure()

    async def abort(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
