"""Seeded RDF change histories for the SPARQL stream, with the dataset they must leave behind.

`generate_rdf_history(seed, commits)` returns commits of Neptune SPARQL stream operations
(`{"op": "ADD" | "REMOVE", "data": {"stmt": "... .\\n"}}`) and `reference`: the set of quads a replica must hold
afterwards, blank nodes skolemised by the documented rule (`_:L` -> `<prefix + L>`) and Neptune's default named
graph as the default graph. The history has named graphs, the default graph written both as a triple and in
Neptune's DefaultNamedGraph, blank-node subjects, objects and graphs, literals plain, language-tagged and typed
(canonical lexical forms: stores may normalise the others), strings that need escapes (quotes, backslashes,
newlines, tabs, control characters, non-ASCII) written with `\\uXXXX` / `\\UXXXXXXXX` and `\\t`-style escapes at
random, and add / remove / re-add of the same quad, sometimes in one commit. A quad is ADDed only while absent and
REMOVEd only while present, as Neptune writes its stream.

`neptune_quad` / `apply_commit` keep a source store (a stand's `rdf_store`, what a bootstrap reads) in step with the
stream, holding quads as Neptune does: blank-node labels as written, default-graph triples in DefaultNamedGraph.

Statements are written here by hand (not by pyoxigraph's serializer), so the parser under test sees escapes and
forms a serializer would not produce; the reference is built from pyoxigraph terms, not by parsing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from pyoxigraph import DefaultGraph, Literal, NamedNode, Quad, RdfFormat, Store, parse

from daemon.rdf import NEPTUNE_DEFAULT_GRAPH

XSD = "http://www.w3.org/2001/XMLSchema#"
EX = "http://example.org/"
_ECHAR = {"\t": "\\t", "\b": "\\b", "\n": "\\n", "\r": "\\r", "\f": "\\f", '"': '\\"', "\\": "\\\\"}
_TRICKY = ['a "quoted" word', "back\\slash", "line\nbreak", "tab\there", "ctl\x01\x1f", "café", "日本語", "🦜", ""]


@dataclass(frozen=True, slots=True)
class Term:
    """A term as the generator knows it: kind iri / bnode / literal, with its parts."""

    kind: str
    value: str
    lang: str | None = None
    datatype: str | None = None


@dataclass(slots=True)
class RdfHistory:
    commits: list[list[dict[str, Any]]] = field(default_factory=list)
    reference: set[Quad] = field(default_factory=set)
    n_ops: int = 0


def _escape_string(text: str, rng: random.Random) -> str:
    out = []
    for ch in text:
        if ch in _ECHAR and (ch in '"\\\n\r' or rng.random() < 0.5):
            out.append(_ECHAR[ch] if rng.random() < 0.7 or ch in '"\\' else f"\\u{ord(ch):04X}")
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif ord(ch) > 0x7F and rng.random() < 0.5:
            out.append(f"\\U{ord(ch):08X}" if ord(ch) > 0xFFFF or rng.random() < 0.3 else f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _uchar(ch: str) -> str:
    return f"\\U{ord(ch):08X}" if ord(ch) > 0xFFFF else f"\\u{ord(ch):04X}"


def _write(term: Term, rng: random.Random) -> str:
    if term.kind == "iri":
        value = term.value
        if rng.random() < 0.2:  # UCHAR escapes are allowed in IRIs too
            value = "".join(_uchar(c) if c.isalpha() and rng.random() < 0.3 else c for c in value)
        return f"<{value}>"
    if term.kind == "bnode":
        return f"_:{term.value}"
    text = f'"{_escape_string(term.value, rng)}"'
    if term.lang:
        return f"{text}@{term.lang}"
    if term.datatype:
        return f"{text}^^<{term.datatype}>"
    return text


def _oxigraph(term: Term, prefix: str) -> Any:
    if term.kind == "iri":
        return DefaultGraph() if term.value == NEPTUNE_DEFAULT_GRAPH else NamedNode(term.value)
    if term.kind == "bnode":
        return NamedNode(prefix + term.value)
    if term.lang:
        return Literal(term.value, language=term.lang)
    return Literal(term.value, datatype=NamedNode(term.datatype)) if term.datatype else Literal(term.value)


def _random_literal(rng: random.Random) -> Term:
    roll = rng.random()
    if roll < 0.3:
        return Term("literal", rng.choice(_TRICKY) + str(rng.randrange(4)))
    if roll < 0.45:
        return Term("literal", rng.choice(["chat", "cat", "Katze", "gato"]), lang=rng.choice(["en", "fr", "de-CH"]))
    if roll < 0.6:
        return Term("literal", str(rng.randrange(-5, 50)), datatype=XSD + "integer")
    if roll < 0.7:
        return Term("literal", rng.choice(["true", "false"]), datatype=XSD + "boolean")
    if roll < 0.8:
        return Term("literal", f"2024-0{rng.randrange(1, 10)}-1{rng.randrange(10)}", datatype=XSD + "date")
    if roll < 0.9:
        return Term("literal", f"v{rng.randrange(5)}", datatype=EX + "custom/type")
    return Term("literal", rng.choice(_TRICKY), datatype=XSD + "string")


def generate_rdf_history(
    seed: int, commits: int, *, blank_node_prefix: str, max_ops: int = 8, pool: int = 60
) -> RdfHistory:
    """A seeded history of `commits` commits and the dataset it leaves (see the module docstring)."""
    rng = random.Random(seed)
    iris = [Term("iri", f"{EX}r/{i}") for i in range(pool // 3)]
    bnodes = [Term("bnode", f"b{i}") for i in range(pool // 6)]
    predicates = [Term("iri", f"{EX}p/{name}") for name in ("name", "knows", "age", "tag", "ünï")]
    graphs: list[Term | None] = [None, None, Term("iri", NEPTUNE_DEFAULT_GRAPH), Term("bnode", "g0")]
    graphs += [Term("iri", f"{EX}g/{k}") for k in range(4)]
    candidates: list[tuple[Term, Term, Term, Term | None]] = []
    for _ in range(pool * 3):
        subject = rng.choice(iris + bnodes)
        obj = rng.choice(iris + bnodes) if rng.random() < 0.3 else _random_literal(rng)
        candidates.append((subject, rng.choice(predicates), obj, rng.choice(graphs)))
    present: dict[Quad, tuple[Term, Term, Term, Term | None]] = {}  # reference quad -> the terms that wrote it
    removed: list[tuple[Term, Term, Term, Term | None]] = []
    history = RdfHistory()

    def quad_of(terms: tuple[Term, Term, Term, Term | None]) -> Quad:
        s, p, o, g = terms
        return Quad(
            _oxigraph(s, blank_node_prefix),
            _oxigraph(p, blank_node_prefix),
            _oxigraph(o, blank_node_prefix),
            DefaultGraph() if g is None else _oxigraph(g, blank_node_prefix),
        )

    def op(kind: str, terms: tuple[Term, Term, Term, Term | None]) -> dict[str, Any]:
        s, p, o, g = terms
        parts = [_write(s, rng), _write(p, rng), _write(o, rng)] + ([_write(g, rng)] if g is not None else [])
        spacing = " " if rng.random() < 0.8 else "\t "
        return {"op": kind, "data": {"stmt": spacing.join(parts) + " .\n"}}

    for _ in range(commits):
        ops: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, max_ops)):
            roll = rng.random()
            if roll < 0.25 and present:
                terms = present.pop(rng.choice(list(present)))
                ops.append(op("REMOVE", terms))
                removed.append(terms)
                if rng.random() < 0.3:  # re-added in the same commit
                    ops.append(op("ADD", terms))
                    present[quad_of(terms)] = terms
            elif roll < 0.4 and removed:
                terms = removed.pop(rng.randrange(len(removed)))
                if quad_of(terms) not in present:  # a re-add in a later commit
                    ops.append(op("ADD", terms))
                    present[quad_of(terms)] = terms
            else:
                terms = rng.choice(candidates)
                if quad_of(terms) not in present:
                    ops.append(op("ADD", terms))
                    present[quad_of(terms)] = terms
                    if rng.random() < 0.1:  # added and removed in one commit
                        ops.append(op("REMOVE", terms))
                        del present[quad_of(terms)]
                        removed.append(terms)
        if ops:
            history.commits.append(ops)
            history.n_ops += len(ops)
    history.reference = set(present)
    return history


def neptune_quad(stmt: str) -> Quad:
    """A stream statement as the source cluster stores it: blank-node labels kept (the label a query answers is
    the stream's label), a triple in Neptune's DefaultNamedGraph."""
    [quad] = parse(stmt, format=RdfFormat.N_QUADS)
    if isinstance(quad.graph_name, DefaultGraph):
        return Quad(quad.subject, quad.predicate, quad.object, NamedNode(NEPTUNE_DEFAULT_GRAPH))
    return quad


def apply_commit(store: Store, ops: list[dict[str, Any]]) -> None:
    """One commit of stream operations applied to a source store (ADD / REMOVE of a quad, in order)."""
    for op in ops:
        quad = neptune_quad(op["data"]["stmt"])
        if op["op"] == "ADD":
            store.add(quad)
        else:
            store.remove(quad)
