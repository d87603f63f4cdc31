"""What a snapshot reader hands the bootstrap: whole vertices and edges, and the position to resume from.

Room in the design: bootstrap steps 1 and 2 (position first, then the snapshot). Every source kind plugs in a
`SnapshotReader`; the CSV / loader path and the direct openCypher path consume the same records.

The contract a reader keeps (it is what makes snapshot + stream equal the source, see docs/bootstrap.md):

1. `position_before()` is called before anything is read and returns, per partition, the stream position
   from which `graph-replicator run` must continue: everything committed after it will be replayed, so the
   snapshot may be fuzzy (each element read at some moment after that position) as long as it is not older.
2. `vertices()` yields every vertex in pages, then `edges()` yields every edge in pages; every edge's two
   endpoints are among the vertices yielded (an edge whose endpoint appeared only after the vertex pass was
   created after the position and comes with the replay; a reader drops it and counts it in `dangling`).
3. Property values are already converted by the value rule (`daemon.values`), names are the source's names.

The DynamoDB reader (`daemon.bootstrap.dynamodb_reader`) keeps it with bare vertices (no label, no property)
for the endpoints no item defines; its edges say `merge_endpoints`, so writing one MERGEs its endpoints as the
stream does (`WHOLE_EDGE`), and a bare vertex needs no change of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY, WHOLE_EDGE, GraphChange, Position


class BootstrapError(Exception):
    """The bootstrap cannot go on; the message says what happened and what to do. Nothing was handed off."""

    exit_code = 1


class BootstrapConfigError(BootstrapError):
    """Missing or unusable settings (exit code 2, like a config error)."""

    exit_code = 2


@dataclass(slots=True)
class SnapshotVertex:
    id: str
    labels: tuple[str, ...]
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SnapshotEdge:
    id: str
    type: str
    from_id: str
    to_id: str
    props: dict[str, Any] = field(default_factory=dict)
    merge_endpoints: bool = False  # an endpoint may be a bare vertex: written as a whole edge (MERGE endpoints)


class SnapshotReader(Protocol):
    """One source's snapshot (see the module doc for the contract)."""

    source: str
    dangling: int  # edges dropped because an endpoint was not in the vertex pass

    async def position_before(self) -> dict[str, Position]:
        """Record and return the position(s) to resume streaming from; call once, before reading."""
        ...

    def vertices(self) -> AsyncIterator[list[SnapshotVertex]]:
        """Every vertex, in pages."""
        ...

    def edges(self) -> AsyncIterator[list[SnapshotEdge]]:
        """Every edge, in pages, after the vertex pass."""
        ...


def vertex_changes(vertex: SnapshotVertex, position: Position = (0, 0)) -> list[GraphChange]:
    """A whole vertex as the change records that create it (labels, then properties)."""
    out = [GraphChange(VERTEX_LABEL, True, vertex.id, label, position=position) for label in vertex.labels]
    out += [GraphChange(VERTEX_PROPERTY, True, vertex.id, k, v, position=position) for k, v in vertex.props.items()]
    return out


def edge_changes(edge: SnapshotEdge, position: Position = (0, 0)) -> list[GraphChange]:
    """A whole edge as the change records that create it (the edge, then its properties)."""
    if edge.merge_endpoints:
        return [GraphChange(WHOLE_EDGE, True, edge.id, edge.type, edge.props, edge.from_id, edge.to_id, position)]
    out = [GraphChange(EDGE, True, edge.id, edge.type, None, edge.from_id, edge.to_id, position=position)]
    out += [GraphChange(EDGE_PROPERTY, True, edge.id, k, v, position=position) for k, v in edge.props.items()]
    return out
