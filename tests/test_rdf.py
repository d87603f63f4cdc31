"""RDF path units: the N-Quads statement parser wrapper (hypothesis), the record translation, the RDF planner,
the embedded Oxigraph sink through `PlanApplier` (ordering, bisection, dead letters) and the config rules."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyoxigraph import DefaultGraph, Literal, NamedNode, Quad

from daemon.config import ConfigError, parse_config
from daemon.deadletter import DeadLetterFile
from daemon.rdf import (
    DELETE,
    INSERT,
    NEPTUNE_DEFAULT_GRAPH,
    MalformedStatement,
    QuadChange,
    RdfPlanner,
    parse_statement,
    sparql_data_block,
)
from daemon.sinks.base import PlanApplier, RetryPolicy
from daemon.sinks.oxigraph import OxigraphSink
from daemon.sources.neptune_sparql import translate_sparql_record
from daemon.sources.pgjson import MalformedRecord
from tests.stand.rdf_workload import XSD, Term, _oxigraph, _write

PREFIX = "https://graph-replicator.invalid/.well-known/genid/src/"

_iri_chars = st.text(
    st.characters(categories=("Lu", "Ll", "Lo", "Nd"), include_characters="-._~/"), min_size=1, max_size=12
)
iris = st.builds(lambda tail: Term("iri", "http://example.org/" + tail), _iri_chars)
bnodes = st.builds(lambda n: Term("bnode", f"b{n}"), st.integers(0, 10**6))
plain = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
literals = st.one_of(
    st.builds(lambda t: Term("literal", t), plain),
    st.builds(lambda t, lang: Term("literal", t, lang=lang), plain, st.sampled_from(["en", "fr", "de-CH", "zh-Hant"])),
    st.builds(lambda n: Term("literal", str(n), datatype=XSD + "integer"), st.integers(-(10**12), 10**12)),
    st.builds(lambda t: Term("literal", t, datatype="http://example.org/dt"), plain),
)
graphs = st.one_of(st.none(), iris, bnodes, st.just(Term("iri", NEPTUNE_DEFAULT_GRAPH)))


@settings(max_examples=300, deadline=None)
@given(
    subject=st.one_of(iris, bnodes),
    predicate=iris,
    obj=st.one_of(iris, bnodes, literals),
    graph=graphs,
    seed=st.integers(0, 2**32),
)
def test_statement_parses_to_its_quad(subject: Term, predicate: Term, obj: Term, graph: Term | None, seed: int) -> None:
    """Any statement, written with escapes chosen at random, parses to the quad it names: blank nodes
    skolemised under the prefix, Neptune's default named graph and a bare triple both in the default graph."""
    rng = random.Random(seed)
    parts = [_write(t, rng) for t in (subject, predicate, obj)] + ([_write(graph, rng)] if graph else [])
    stmt = " ".join(parts) + " .\n"
    expected = Quad(
        _oxigraph(subject, PREFIX),
        _oxigraph(predicate, PREFIX),
        _oxigraph(obj, PREFIX),
        DefaultGraph() if graph is None else _oxigraph(graph, PREFIX),
    )
    assert parse_statement(stmt, PREFIX) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_is_malformed(text: str) -> None:
    """Nothing but a quad or `MalformedStatement` comes out, whatever the text."""
    try:
        quad = parse_statement(text, PREFIX)
    except MalformedStatement as exc:
        assert exc.reason
    else:
        assert isinstance(quad, Quad)


@pytest.mark.parametrize(
    ("stmt", "reason"),
    [
        ('<http://s> <http://p> "unterminated .\n', "line 1"),
        ("<http://s> <http://p> <http://o> .\n<http://s> <http://p> <http://o2> .\n", "holds 2"),
        ("", "holds 0"),
        ('"lit" <http://p> <http://o> .\n', "not an N-Quads statement"),
        ("<http://s> <http://p> <http://o> <http://g> <http://extra> .\n", "not an N-Quads statement"),
        ("<< <http://a> <http://b> <http://c> >> <http://p> <http://o> .\n", "not an N-Quads statement"),
    ],
)
def test_malformed_statements_name_the_reason(stmt: str, reason: str) -> None:
    with pytest.raises(MalformedStatement, match=reason):
        parse_statement(stmt, PREFIX)


def record(commit: int, op_num: int, stmt: object, op: str = "ADD") -> dict:
    return {"commitTimestamp": 1_700_000_000_000, "eventId": {"commitNum": commit, "opNum": op_num},
            "data": {"stmt": stmt}, "op": op}  # fmt: skip


def test_records_translate_with_position_or_dead_letter_reason() -> None:
    change = translate_sparql_record(record(3, 2, '_:x <http://p> "v"@en .\n', "REMOVE"), PREFIX)
    assert change.position == (3, 2) and not change.add and change.commit_ms == 1_700_000_000_000
    assert change.quad == Quad(NamedNode(PREFIX + "x"), NamedNode("http://p"), Literal("v", language="en"))
    with pytest.raises(MalformedRecord) as bad:
        translate_sparql_record(record(4, 1, "<http://s> <http://p> .\n"), PREFIX)
    assert bad.value.position == (4, 1) and "N-Quads" in bad.value.reason
    with pytest.raises(MalformedRecord, match="op must be"):
        translate_sparql_record(record(4, 2, "<http://s> <http://p> <http://o> .\n", "UPSERT"), PREFIX)
    with pytest.raises(MalformedRecord, match=r"data\.stmt"):
        translate_sparql_record(record(4, 3, 17), PREFIX)


def q(n: int, graph: str | None = None) -> Quad:
    g = NamedNode(graph) if graph else DefaultGraph()
    return Quad(NamedNode(f"http://s/{n}"), NamedNode("http://p"), Literal(f"v{n}"), g)


def changes(*ops: tuple[bool, Quad]) -> list[QuadChange]:
    return [QuadChange(add, quad, (1, i + 1)) for i, (add, quad) in enumerate(ops)]


def test_planner_keeps_the_last_operation_of_each_quad() -> None:
    ops = [(True, 1), (False, 1), (False, 2), (True, 2), (True, 3), (True, 1), (False, 4)]
    window = changes(*[(add, q(n)) for add, n in ops])
    plan = asyncio.run(RdfPlanner().plan(window))
    assert plan.n_changes == 7 and len(plan.layers) == 1
    (phase,) = plan.layers[0]
    by_statement = {b.statement: [r["quad"] for r in b.rows] for b in phase}
    assert by_statement == {DELETE: [q(4)], INSERT: [q(1), q(2), q(3)]}
    [m1] = [m for b in phase for m in b.mutations if m.quad == q(1)]
    assert [c.position for c in m1.changes] == [(1, 1), (1, 2), (1, 6)]


def test_sparql_data_block_groups_graphs() -> None:
    block = sparql_data_block([q(1), q(2, "http://g/a"), q(3, "http://g/a")])
    assert block.startswith('{ <http://s/1> <http://p> "v1" .')
    assert 'GRAPH <http://g/a> { <http://s/2> <http://p> "v2" . <http://s/3> <http://p> "v3" . }' in block


class PickySink(OxigraphSink):
    """An embedded store that refuses any batch holding a given quad, as a server refuses a bad literal."""

    def __init__(self, path: Path, poison: Quad) -> None:
        super().__init__("picky", path=path)
        self.poison = poison

    async def execute(self, statement: str, rows: list[dict]) -> list[dict]:
        if any(row["quad"] == self.poison for row in rows):
            raise SyntaxError("refused (test)")
        return await super().execute(statement, rows)


def test_embedded_store_applies_plans_and_dead_letters_a_refused_quad(tmp_path: Path) -> None:
    async def main() -> tuple[int, set[Quad], list[str]]:
        sink = PickySink(tmp_path / "store", poison=q(7))
        await sink.start()
        dead = DeadLetterFile(tmp_path / "dead.jsonl")
        planner = RdfPlanner()
        applier = PlanApplier(sink, source="src", batch_size=3, concurrency=asyncio.Semaphore(2),
                              retry=RetryPolicy(0.01, 0.02), dead_letters=dead, replan=planner.plan)  # fmt: skip
        applied = await applier.apply(await planner.plan(changes(*[(True, q(n)) for n in range(10)])))
        applied += await applier.apply(await planner.plan(changes((False, q(3)), (True, q(3, "http://g")))))
        rows = await sink.query("SELECT ?s WHERE { { ?s ?p ?o } UNION { GRAPH ?g { ?s ?p ?o } } } ORDER BY ?s")
        held = set(sink._opened().quads_for_pattern(None, None, None, None))
        await sink.close()
        return applied, held, [r["s"] for r in rows]

    applied, held, subjects = asyncio.run(main())
    assert applied == 11  # 12 changes less the refused one
    assert held == {q(n) for n in range(10) if n not in (3, 7)} | {q(3, "http://g")}
    assert "<http://s/3>" in subjects and "<http://s/7>" not in subjects
    lines = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"quad":"<http://s/7> <http://p> \\"v7\\" ."' in lines[0] and "[1,8]" in lines[0]


BASE = """
[daemon]
data_dir = "/tmp/x"
[[sources]]
name = "rdf"
kind = "neptune-sparql"
endpoint = "https://db.cluster-x.us-east-1.neptune.amazonaws.com:8182"
region = "us-east-1"
sink = "{sink}"
[sinks.store]
kind = "oxigraph"
[sinks.pg]
kind = "falkordb"
[sinks.remote]
kind = "sparql"
update_url = "https://db.cluster-x.us-east-1.neptune.amazonaws.com:8182/sparql"
auth = "{auth}"
"""


def test_config_pairs_rdf_sources_with_rdf_sinks() -> None:
    config = parse_config(BASE.format(sink="store", auth="none"))
    assert config.sources[0].kind == "neptune-sparql" and config.sinks["store"].kind == "oxigraph"
    with pytest.raises(ConfigError, match="needs an RDF sink"):
        parse_config(BASE.format(sink="pg", auth="none"))
    with pytest.raises(ConfigError, match="region is required"):
        parse_config(BASE.format(sink="remote", auth="sigv4"))
    remote = parse_config(BASE.format(sink="remote", auth="sigv4") + 'region = "us-east-1"\n').sinks["remote"]
    assert remote.kind == "sparql" and remote.auth == "sigv4"


def test_a_page_parsed_in_one_call_equals_each_statement_parsed_alone() -> None:
    from daemon.rdf import parse_statements
    from tests.stand.rdf_workload import generate_rdf_history

    stmts = [op["data"]["stmt"] for ops in generate_rdf_history(3, 80, blank_node_prefix=PREFIX).commits for op in ops]
    assert parse_statements(stmts, PREFIX) == [parse_statement(s, PREFIX) for s in stmts]
    for bad in ('<http://s> <http://p> "x .\n', "# a comment\n", "<http://s> <http://p> <http://o> .", None):
        assert parse_statements([*stmts[:5], bad, *stmts[5:9]], PREFIX) is None  # then record by record


def test_a_well_formed_page_translates_in_one_pass_like_record_by_record() -> None:
    """The page fast path (`_well_formed_changes`) gives what `translate_sparql_record` gives record by record,
    and hands any page with a record it does not expect to the careful path (None)."""
    from daemon.rdf import parse_statements
    from daemon.sources.neptune_sparql import _well_formed_changes
    from tests.stand.rdf_workload import generate_rdf_history

    commits = generate_rdf_history(5, 60, blank_node_prefix=PREFIX).commits
    records = [record(c, i, op["data"]["stmt"], op["op"]) for c, ops in enumerate(commits, 1)
               for i, op in enumerate(ops, 1)]  # fmt: skip
    records[3] = {**records[3], "commitTimestamp": None, "commitTimestampInMillis": 5}
    quads = parse_statements([r["data"]["stmt"] for r in records], PREFIX)
    assert quads is not None
    fast = _well_formed_changes(records, quads)
    assert fast == [translate_sparql_record(r, PREFIX) for r in records]
    assert fast[3].commit_ms == 0 and fast[4].commit_ms == 1_700_000_000_000
    for bad in ({"op": "UPSERT"}, {"eventId": {"commitNum": 1, "opNum": "2"}}, {"eventId": None},
                {"eventId": {"commitNum": -1, "opNum": 1}}):  # fmt: skip
        page = [*records[:5], {**records[5], **bad}, *records[6:]]
        assert _well_formed_changes(page, quads) is None
