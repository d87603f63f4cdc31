"""Coalescing, layering and grouping (daemon.scheduler): what may run together, what must wait, what merges."""

from __future__ import annotations

from itertools import count
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.cypher import falkordb_dialect, neptune_dialect
from daemon.model import (
    EDGE,
    EDGE_PROPERTY,
    VERTEX_LABEL,
    VERTEX_PROPERTY,
    WHOLE_EDGE,
    WHOLE_VERTEX,
    GraphChange,
)
from daemon.names import InvalidName
from daemon.scheduler import EdgeTypeCache, Plan, Planner

_seq = count(1)


def vl(vid: str, label: str, add: bool = True) -> GraphChange:
    return GraphChange(VERTEX_LABEL, add, vid, label, position=(next(_seq), 1))


def vp(vid: str, key: str, value: Any, add: bool = True) -> GraphChange:
    return GraphChange(VERTEX_PROPERTY, add, vid, key, value, position=(next(_seq), 1))


def e(eid: str, etype: str, src: str, dst: str, add: bool = True) -> GraphChange:
    return GraphChange(EDGE, add, eid, etype, None, src, dst, position=(next(_seq), 1))


def ep(eid: str, key: str, value: Any, add: bool = True) -> GraphChange:
    return GraphChange(EDGE_PROPERTY, add, eid, key, value, position=(next(_seq), 1))


async def no_lookup(ids: list[str]) -> dict[str, str]:
    raise AssertionError(f"unexpected lookup of {ids}")


def planner(dialect=None, lookup=no_lookup) -> Planner:
    return Planner(dialect or falkordb_dialect(), lookup, 100)


def layers_of(plan: Plan, element_id: str) -> list[int]:
    """The layers in which an element has a row (once per layer)."""
    return sorted(
        {
            i
            for i, layer in enumerate(plan.layers)
            for phase in layer
            for b in phase
            for r in b.rows
            if r["id"] == element_id
        }
    )


def shapes(plan: Plan) -> list[list[list[tuple]]]:
    """Per layer, per phase, the shapes with their rows, to compare whole plans."""
    return [[[(b.shape, b.rows) for b in phase] for phase in layer] for layer in plan.layers]


async def test_vertex_creation_coalesces_into_one_mutation_with_a_row_per_statement() -> None:
    plan = await planner().plan([vl("a", "Person"), vl("a", "Admin"), vp("a", "name", "x"), vp("a", "age", 3)])
    assert plan.n_changes == 4 and plan.n_mutations == 1
    assert shapes(plan) == [
        [
            # FalkorDB: a new vertex is created with its labels first (labelling an existing node is slow there)
            [(("vcreate", "Person"), [{"id": "a"}])],
            [(("vupsert", True, True), [{"id": "a", "props": {"name": "x", "age": 3}}])],
            [(("vlabel", "Person"), [{"id": "a"}]), (("vlabel", "Admin"), [{"id": "a"}])],
        ]
    ]
    (create,), (upsert,), labels = plan.layers[0]
    assert create.statement == (
        "UNWIND $rows AS r OPTIONAL MATCH (n:`Replicated` {`~id`: r.id}) WITH r, n WHERE n IS NULL "
        "CREATE (m:`Replicated`:`Person` {`~id`: r.id})"
    )
    assert upsert.statement == "UNWIND $rows AS r MERGE (n:`Replicated` {`~id`: r.id}) SET n += r.props"
    assert labels[0].statement == "UNWIND $rows AS r MATCH (n:`Replicated` {`~id`: r.id}) SET n:`Person`"


async def test_statements_grow_with_names_not_label_combinations() -> None:
    changes = [vl("a", "A"), vl("a", "B"), vl("b", "B"), vl("b", "A"), vl("c", "A")]
    plan = await planner().plan(changes)
    creates, (upserts,), labels = plan.layers[0]
    assert {b.shape: len(b.rows) for b in creates} == {("vcreate", "A"): 2, ("vcreate", "B"): 1}  # first label
    assert len(upserts.rows) == 3
    assert {b.shape: len(b.rows) for b in labels} == {("vlabel", "A"): 3, ("vlabel", "B"): 2}


async def test_edges_wait_for_their_endpoints_and_share_a_layer() -> None:
    changes = [vl("a", "P"), vl("b", "P"), vl("c", "P"), e("e1", "R", "a", "b"), e("e2", "R", "a", "c")]
    plan = await planner().plan(changes)
    assert layers_of(plan, "a") == [0] and layers_of(plan, "b") == [0]
    assert layers_of(plan, "e1") == [1] and layers_of(plan, "e2") == [1]
    assert shapes(plan)[1] == [
        [(("upsert", "R", False), [{"id": "e1", "from": "a", "to": "b"}, {"id": "e2", "from": "a", "to": "c"}])]
    ]


async def test_drop_waits_for_the_edges_it_detaches_and_later_edges_wait_for_the_drop() -> None:
    changes = [
        vl("a", "P"),
        vl("b", "P"),
        e("e1", "R", "a", "b"),
        ep("e1", "w", 1),
        ep("e1", "w", 1, add=False),
        e("e1", "R", "a", "b", add=False),
        vl("a", "P", add=False),
        e("e2", "R", "a", "b"),
    ]
    plan = await planner().plan(changes)
    assert shapes(plan)[1] == [[(("delete", "R"), [{"id": "e1"}])]]  # create+props+delete of one edge
    assert layers_of(plan, "a") == [0, 2]
    assert shapes(plan)[2] == [
        [(("vdrop",), [{"id": "a", "gone": ["P", "Replicated"]}])],
        [(("vunlabel", "P"), [{"id": "a"}])],
    ]
    assert layers_of(plan, "e2") == [3]


async def test_property_changes_and_label_additions_after_an_edge_join_the_vertex_mutation_before_it() -> None:
    changes = [
        vl("a", "P"),
        vp("a", "k", 1),
        vl("b", "P"),
        e("e1", "R", "a", "b"),
        vp("a", "k", 1, add=False),
        vp("a", "k", 2),
        vl("a", "Q"),
        vp("b", "j", 3),
    ]
    plan = await planner().plan(changes)
    assert plan.n_mutations == 3  # a, b and e1: the changes after the edge need no layer of their own
    assert layers_of(plan, "a") == [0] and layers_of(plan, "b") == [0] and layers_of(plan, "e1") == [1]
    rows = {b.shape: b.rows for b in plan.batches()}
    assert rows[("vupsert", True, True)] == [{"id": "a", "props": {"k": 2}}, {"id": "b", "props": {"j": 3}}]
    assert rows[("vlabel", "Q")] == [{"id": "a"}]


async def test_label_removals_and_whole_edges_still_wait_for_the_edge() -> None:
    plan = await planner().plan([vl("a", "P"), vl("a", "Q"), vl("b", "P"), e("e1", "R", "a", "b"), vl("a", "Q", False)])
    assert layers_of(plan, "a") == [0, 2] and layers_of(plan, "e1") == [1]  # a label removal may drop the vertex
    plan = await planner().plan([vl("a", "P", False), e("e1", "R", "a", "b"), vp("a", "k", 1)])
    assert layers_of(plan, "a") == [0, 2]  # the mutation before the edge may drop the vertex: closed
    plan = await planner().plan([vp("a", "k", 1), e("e1", "R", "a", "b"), vl("a", "Q"), vp("a", "k", 2)])
    assert layers_of(plan, "a") == [0, 2]  # a label addition joins only a mutation that makes sure the vertex exists
    # dropped and re-created before the edge (the new label keeps the vertex): later changes join
    plan = await planner().plan([vl("a", "P", False), vl("a", "Q"), e("e1", "R", "a", "b"), vp("a", "k", 1)])
    assert layers_of(plan, "a") == [0]
    plan = await planner().plan(
        [
            GraphChange(WHOLE_VERTEX, True, "a", "P", {"k": 1}, position=(next(_seq), 1)),
            GraphChange(WHOLE_EDGE, False, "e1", "R", {}, "a", "b", position=(next(_seq), 1)),
            GraphChange(WHOLE_VERTEX, True, "a", "P", {"k": 2}, position=(next(_seq), 1)),
        ]
    )
    # whole elements: a removed edge may delete its endpoints if bare (layer 1), so the next image waits for it
    assert layers_of(plan, "a") == [0, 1, 2]


async def test_property_update_pattern_keeps_the_new_value() -> None:
    for changes in ([vp("a", "k", 1, add=False), vp("a", "k", 2)], [vp("a", "k", 2), vp("a", "k", 1, add=False)]):
        plan = await planner().plan(changes)
        assert shapes(plan) == [[[(("vset",), [{"id": "a", "props": {"k": 2}}])]]]


async def test_removals_of_any_keys_are_one_statement_in_the_last_phase() -> None:
    plan = await planner().plan(
        [vp("a", "k", 2), vp("a", "k", 2, add=False), vp("a", "j", 1, add=False), vp("b", "k", 3, add=False)]
    )
    # one map per removed key: never two nulls in one map (FalkorDB, see daemon.cypher)
    assert shapes(plan) == [
        [[(("vnulls",), [{"id": "a", "removed": [{"k": None}, {"j": None}]}, {"id": "b", "removed": [{"k": None}]}])]]
    ]
    assert plan.layers[0][0][0].statement == (
        "UNWIND $rows AS r MATCH (n:`Replicated` {`~id`: r.id}) UNWIND r.removed AS m SET n += m"
    )


async def test_edge_removals_are_one_statement_per_type_and_neptune_deletes_edges_of_every_type_at_once() -> None:
    changes = [
        vl("a", "P"),
        vl("b", "P"),
        e("e1", "R", "a", "b"),
        e("e2", "S", "b", "a"),
        ep("e1", "w", 1),
        ep("e1", "x", 2),
        ep("e2", "w", 3),
    ]
    p = planner(neptune_dialect())
    await p.plan(changes)
    plan = await p.plan(
        [ep("e1", "w", 1, add=False), ep("e1", "x", 2, add=False), ep("e2", "w", 3, add=False), e("e3", "R", "a", "b")]
    )
    assert sorted((b.shape, b.rows) for b in plan.batches() if b.shape[0] == "enulls") == [
        (("enulls", "R"), [{"id": "e1", "removed": [{"w": None}, {"x": None}]}]),
        (("enulls", "S"), [{"id": "e2", "removed": [{"w": None}]}]),
    ]
    plan = await p.plan([e("e1", "R", "a", "b", add=False), e("e2", "S", "b", "a", add=False)])
    (delete,) = plan.batches()
    assert delete.shape == ("edrop",) and delete.rows == [
        {"id": "e1", "from": "a", "to": "b"},
        {"id": "e2", "from": "b", "to": "a"},
    ]
    assert delete.statement == (
        "UNWIND $rows AS r MATCH (a {`~id`: r.from})-[e {`~id`: r.id}]->(b {`~id`: r.to}) DELETE e"
    )


async def test_numeric_retype_removes_before_setting() -> None:
    plan = await planner().plan([vp("a", "k", 0.0, add=False), vp("a", "k", 0)])
    assert shapes(plan) == [
        [[(("vnulls",), [{"id": "a", "removed": [{"k": None}]}])], [(("vset",), [{"id": "a", "props": {"k": 0}}])]]
    ]


async def test_label_remove_then_add_nets_out() -> None:
    plan = await planner().plan([vl("a", "X", add=False), vl("a", "X")])
    assert shapes(plan) == [
        [
            [(("vcreate", "X"), [{"id": "a"}])],
            [(("vupsert", True, False), [{"id": "a"}])],
            [(("vlabel", "X"), [{"id": "a"}])],
        ]
    ]


async def test_drop_then_recreate_in_one_run() -> None:
    plan = await planner().plan(
        [vp("a", "k", 1, add=False), vl("a", "Old", add=False), vl("a", "New"), vp("a", "j", 2)]
    )
    assert shapes(plan) == [
        [
            [(("vcreate", "New"), [{"id": "a"}])],
            [(("vupsert", True, True), [{"id": "a", "props": {"j": 2}}])],
            [(("vlabel", "New"), [{"id": "a"}])],
            [(("vdrop",), [{"id": "a", "gone": ["Old", "Replicated"]}])],
            [(("vunlabel", "Old"), [{"id": "a"}])],
            [(("vnulls",), [{"id": "a", "removed": [{"k": None}]}])],
        ]
    ]


async def test_edge_property_types_come_from_the_cache_or_the_sink() -> None:
    asked: list[list[str]] = []

    async def lookup(ids: list[str]) -> dict[str, str]:
        asked.append(ids)
        return {"old": "KNOWS"}

    p = planner(lookup=lookup)
    await p.plan([e("new", "LIKES", "a", "b")])
    plan = await p.plan([ep("new", "w", 1), ep("old", "w", 2), ep("gone", "w", 3)])
    assert asked == [["gone", "old"]]
    assert sorted(b.shape for b in plan.batches()) == [("props", "KNOWS"), ("props", "LIKES")]
    assert [c.id for c in plan.skipped] == ["gone"]
    assert p.edge_types.get("old") == "KNOWS"


async def test_neptune_dialect_has_no_base_label_and_raw_keys() -> None:
    plan = await planner(neptune_dialect()).plan([vl("a", "P`Q"), vp("a", "we`ird", 1), vl("b", "P", add=False)])
    statements = {b.shape: (b.statement, b.rows) for b in plan.batches()}
    assert statements[("vupsert", True, True)] == (
        "UNWIND $rows AS r MERGE (n {`~id`: r.id}) SET n += r.props",
        [{"id": "a", "props": {"we`ird": 1}}],
    )
    assert statements[("vlabel", "P`Q")][0].endswith("SET n:`P``Q`")
    assert statements[("vdrop",)][1] == [{"id": "b", "gone": ["P"]}]


async def test_falkordb_dialect_encodes_names_in_text_and_keys() -> None:
    plan = await planner().plan([vl("a", "P`Q"), vp("a", "5%", 1)])
    statements = {b.shape: (b.statement, b.rows) for b in plan.batches()}
    assert statements[("vlabel", "P`Q")][0].endswith("SET n:`P%60Q`")
    assert statements[("vupsert", True, True)][1] == [{"id": "a", "props": {"5%25": 1}}]


def test_edge_type_cache_is_bounded_lru() -> None:
    cache = EdgeTypeCache(2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"
    cache.put("c", "C")
    assert cache.get("b") is None and cache.get("a") == "A" and len(cache) == 2


def _ids(changes: list[GraphChange]) -> list[int]:
    return [id(c) for c in changes]


async def _by_parts(p: Planner, changes: list[GraphChange]) -> tuple[list[Any], list[tuple[int, str]]]:
    """The batches `Planner._parts` gives each mutation, grouped per layer, phase and shape in mutation order (the
    route every mutation took before whole elements had their own), and the rejected changes."""
    rejected: list[tuple[GraphChange, str]] = []
    mutations, _, untyped = p._coalesce_and_layer(changes, rejected)
    await p._resolve_edge_types(untyped)
    layers: dict[int, dict[int, dict[tuple, list]]] = {}
    for m in mutations:
        if getattr(m, "action", None) == "noop":
            continue
        try:
            parts = p._parts(m)
            for _, shape, _ in parts:
                p._statement(shape)
        except InvalidName as exc:
            rejected.extend((c, f"invalid_name: {exc}") for c in m.changes)
            continue
        for phase, shape, row in parts:
            layers.setdefault(m.layer, {}).setdefault(phase, {}).setdefault(shape, []).append((row, _ids(m.changes)))
    out = [[list(phases[k].items()) for k in sorted(phases)] for _, phases in sorted(layers.items())]
    return out, [(id(c), reason) for c, reason in rejected]


_names = st.sampled_from(["A", "B", "P`Q", "5%", "Replicated", "~id", ""])
_values = st.sampled_from([1, 1.0, 0, 0.0, "x", True, None])


@st.composite
def _windows(draw: Any) -> list[GraphChange]:
    ids = [f"v{i}" for i in range(draw(st.integers(1, 6)))]
    out = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["vr", "vr", "er", "er", "vp", "vl", "e", "ep"]))
        add = draw(st.booleans())
        if kind in ("vr", "er"):
            props = draw(st.dictionaries(_names, _values, max_size=3)) if add else None
            if kind == "vr":
                out.append(GraphChange(WHOLE_VERTEX, add, draw(st.sampled_from(ids)), draw(_names), props))
            else:
                src, dst = draw(st.sampled_from(ids)), draw(st.sampled_from(ids))
                out.append(
                    GraphChange(
                        WHOLE_EDGE,
                        add,
                        f"e{draw(st.integers(0, 3))}",
                        draw(st.sampled_from(["T", "U`"])),
                        props,
                        src,
                        dst,
                    )
                )
        elif kind == "vp":
            out.append(vp(draw(st.sampled_from(ids)), draw(_names), draw(_values), add))
        elif kind == "vl":
            out.append(vl(draw(st.sampled_from(ids)), draw(_names), add))
        elif kind == "e":
            out.append(
                e(f"e{draw(st.integers(0, 3))}", "T", draw(st.sampled_from(ids)), draw(st.sampled_from(ids)), add)
            )
        else:
            out.append(ep(f"e{draw(st.integers(0, 3))}", draw(_names), draw(_values), add))
    return out


@settings(max_examples=200, deadline=None)
@given(window=_windows(), falkordb=st.booleans())
async def test_whole_elements_get_the_rows_parts_gives(window: list[GraphChange], falkordb: bool) -> None:
    """Whole elements take their rows without `_parts`; the plan is what `_parts` gives every mutation."""

    async def lookup(ids: list[str]) -> dict[str, str]:
        return dict.fromkeys(ids, "T")

    p = Planner(falkordb_dialect() if falkordb else neptune_dialect(), lookup, 100)
    expected, expected_rejected = await _by_parts(p, window)
    plan = await Planner(p.dialect, lookup, 100).plan(window)
    got = [
        [
            [(b.shape, list(zip(b.rows, [_ids(m.changes) for m in b.mutations], strict=True))) for b in phase]
            for phase in layer
        ]
        for layer in plan.layers
    ]
    assert got == expected
    assert [(id(c), reason) for c, reason in plan.rejected] == expected_rejected
