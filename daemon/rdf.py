"""RDF changes: the quad change model, the N-Quads statement parser of SPARQL streams, and the RDF planner.

Neptune's SPARQL stream carries one quad per record (`{"stmt": "<s> <p> <o> <g> .\\n"}`, op ADD / REMOVE). Quads
have set semantics, so they do not go through the property-graph model (`GraphChange`) and the Cypher planner:

* `parse_statement` reads a record's statement with pyoxigraph's N-Quads parser (IRIs, blank nodes, literals with
  language tags and datatypes, escapes, the default graph) and returns exactly one `pyoxigraph.Quad`, or raises
  `MalformedStatement` with the parser's line/column and reason (the source dead-letters the record).
* **Blank nodes are skolemised** (RDF 1.1 section 3.5): the stream names a blank node by a label that stays the
  same across commits of one stream, so `_:b7` becomes the IRI `<prefix + "b7">`, the prefix being per source
  (`blank_node_prefix`, by default `https://graph-replicator.invalid/.well-known/genid/<source>/`). A later REMOVE
  of a quad with `_:b7` then finds the quad the ADD wrote; unskolemised, every `INSERT DATA` would mint a fresh
  blank node and `DELETE DATA` cannot name one at all. Replicas hold skolem IRIs where the source holds blank nodes.
* Neptune keeps default-graph triples in the named graph `NEPTUNE_DEFAULT_GRAPH`; a statement in that graph, or
  written as a triple, is a change to the target's default graph.
* `RdfPlanner` turns a window of `QuadChange`s into the `Plan` shape `daemon.sinks.base.PlanApplier` applies, so
  RDF sinks get the same retries, bisection and dead letters as the property-graph sinks. For each distinct quad
  only its last operation in the window matters (set semantics, so source order per quad is kept by construction);
  different quads are independent, so the window becomes one layer of two batches, `DELETE DATA` and
  `INSERT DATA`, that run side by side. A rejected quad is replanned change by change, in source order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyoxigraph import BlankNode, DefaultGraph, Literal, NamedNode, Quad, RdfFormat, parse, serialize

from daemon.model import Position
from daemon.scheduler import Batch, Plan

__all__ = [
    "DELETE",
    "INSERT",
    "NEPTUNE_DEFAULT_GRAPH",
    "MalformedStatement",
    "QuadChange",
    "QuadMutation",
    "RdfPlanner",
    "default_blank_node_prefix",
    "normalise_quad",
    "nquad",
    "parse_statement",
    "parse_statements",
    "sparql_data_block",
]

NEPTUNE_DEFAULT_GRAPH = "http://aws.amazon.com/neptune/vocab/v01/DefaultNamedGraph"
_NDG = "DefaultNamedGraph"
INSERT, DELETE = "INSERT DATA", "DELETE DATA"


def default_blank_node_prefix(source: str) -> str:
    """The skolem IRI prefix of a source's blank nodes when the config sets none."""
    return f"https://graph-replicator.invalid/.well-known/genid/{source}/"


class MalformedStatement(ValueError):
    """A stream statement that is not exactly one N-Quads statement this replica can hold."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_statement(stmt: str, blank_node_prefix: str) -> Quad:
    """The one quad a stream statement holds, blank nodes skolemised under `blank_node_prefix` and Neptune's
    default named graph mapped to the default graph. Raises `MalformedStatement` (with the parser's position)."""
    if not isinstance(stmt, str):
        raise MalformedStatement(f"the statement is not a string: {type(stmt).__name__}")
    try:
        quads = list(parse(stmt, format=RdfFormat.N_QUADS))
    except SyntaxError as exc:
        raise MalformedStatement(f"not an N-Quads statement: {exc}") from None
    if len(quads) != 1:
        raise MalformedStatement(f"a stream statement holds exactly one quad, this one holds {len(quads)}")
    return normalise_quad(quads[0], blank_node_prefix)


def parse_statements(stmts: list[Any], blank_node_prefix: str) -> list[Quad] | None:
    """`parse_statement` of a page of statements in one parser call (a call costs about 30 us, most of the reading
    time); None when the page cannot be read that way (a statement that is not exactly one line, or text that does
    not give one quad per line), and then each is parsed alone to find the bad one. N-Quads allows one statement a
    line, so line i is statement i."""
    for stmt in stmts:
        if not isinstance(stmt, str) or not stmt.endswith("\n") or stmt.count("\n") != 1 or "\r" in stmt:
            return None
    try:
        quads = list(parse("".join(stmts), format=RdfFormat.N_QUADS))
        if len(quads) != len(stmts):
            return None
        # `normalise_quad` reads every term back from pyoxigraph (a few us a quad); a statement with no blank
        # node, no triple term, no `\u` escape and no mention of Neptune's default graph needs none of its work
        return [
            quad if _plain(stmt) else normalise_quad(quad, blank_node_prefix)
            for stmt, quad in zip(stmts, quads, strict=True)
        ]
    except (SyntaxError, MalformedStatement):
        return None


def _plain(stmt: str) -> bool:
    """True when the statement's text shows it holds no term `normalise_quad` changes: N-Quads writes blank nodes
    `_:label` and triple terms `<<`, and an IRI naming Neptune's default graph holds its name unless a UCHAR
    escape (backslash-u) spells part of it."""
    return "_:" not in stmt and "<<" not in stmt and "\\u" not in stmt and "\\U" not in stmt and _NDG not in stmt


def normalise_quad(quad: Quad, blank_node_prefix: str) -> Quad:
    """`quad` as the replica holds it: blank nodes skolemised under `blank_node_prefix`, Neptune's default named
    graph mapped to the default graph; `MalformedStatement` for RDF-star triple terms. The stream and the
    bootstrap both go through it, so a streamed and a bootstrapped replica agree."""
    subject, obj, graph = quad.subject, quad.object, quad.graph_name
    if (
        type(subject) is NamedNode
        and type(obj) in (NamedNode, Literal)
        and (type(graph) is DefaultGraph or (type(graph) is NamedNode and graph.value != NEPTUNE_DEFAULT_GRAPH))
    ):
        return quad  # nothing to skolemise or map (most quads)
    if not isinstance(subject, NamedNode | BlankNode) or not isinstance(obj, NamedNode | BlankNode | Literal):
        raise MalformedStatement("triple terms (RDF-star / RDF 1.2) are not supported")
    if isinstance(graph, NamedNode) and graph.value == NEPTUNE_DEFAULT_GRAPH:
        graph = DefaultGraph()
    return Quad(
        _skolem(subject, blank_node_prefix),
        quad.predicate,
        _skolem(obj, blank_node_prefix),
        _skolem(graph, blank_node_prefix),
    )


def _skolem(term: Any, prefix: str) -> Any:
    return NamedNode(prefix + term.value) if isinstance(term, BlankNode) else term


def nquad(quad: Quad) -> str:
    """One quad as an N-Quads line without the newline (dead letters, logs, capture comparison)."""
    return serialize([quad], format=RdfFormat.N_QUADS).decode().rstrip("\n")


def sparql_data_block(quads: Iterable[Quad]) -> str:
    """The `{ ... }` block of an `INSERT DATA` / `DELETE DATA` request: default-graph triples, then one
    `GRAPH <g> { ... }` per named graph. Terms are written in their N-Triples form, which SPARQL reads as is."""
    default: list[str] = []
    named: dict[str, list[str]] = {}
    for q in quads:
        triple = f"{q.subject} {q.predicate} {q.object} ."
        if isinstance(q.graph_name, DefaultGraph):
            default.append(triple)
        else:
            named.setdefault(str(q.graph_name), []).append(triple)
    parts = default + [f"GRAPH {g} {{ {' '.join(triples)} }}" for g, triples in named.items()]
    return "{ " + "\n".join(parts) + " }"


@dataclass(slots=True)
class QuadChange:
    """One ADD or REMOVE of a quad (blank nodes already skolemised), at its stream position."""

    add: bool
    quad: Quad
    position: Position = (0, 0)
    commit_ms: int = 0
    partition: str = ""

    @property
    def id(self) -> str:
        """The quad as N-Quads: what logs and dead letters name the changed element by."""
        return nquad(self.quad)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description for the dead-letter file and logs."""
        return {"kind": "quad", "op": "ADD" if self.add else "REMOVE", "quad": self.id, "position": list(self.position)}


@dataclass(slots=True)
class QuadMutation:
    """What one window does to one quad: its last operation; `changes` are every change to it in the window."""

    quad: Quad
    add: bool
    changes: list[QuadChange] = field(default_factory=list)

    @property
    def id(self) -> str:
        return nquad(self.quad)


class RdfPlanner:
    """Turns windows of `QuadChange`s into `Plan`s: one layer, a `DELETE DATA` and an `INSERT DATA` batch."""

    async def plan(self, changes: Iterable[QuadChange]) -> Plan:
        mutations: dict[Quad, QuadMutation] = {}
        n = 0
        for change in changes:
            n += 1
            m = mutations.get(change.quad)
            if m is None:
                m = mutations[change.quad] = QuadMutation(change.quad, change.add)
            m.add = change.add
            m.changes.append(change)
        deletes = Batch(("rdf", DELETE), DELETE)
        inserts = Batch(("rdf", INSERT), INSERT)
        for m in mutations.values():
            batch = inserts if m.add else deletes
            batch.rows.append({"quad": m.quad})
            batch.mutations.append(m)  # type: ignore[arg-type]  # the applier only reads `id` and `changes`
        phase = [b for b in (deletes, inserts) if b.rows]
        return Plan([[phase]] if phase else [], [], n)
