"""openCypher CSV round trip: the daemon's writer against the test stand's independent reader (hypothesis).

Every value the value rule produces (for every PG_JSON data type), names and ids with unicode, commas, quotes and
line breaks: what the writer puts in a CSV cell must read back as the same value of the same type, and what it
cannot put there must come out as residual change records, so that rows + residual rebuild each element.
"""

from __future__ import annotations

import asyncio
import gzip
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.bootstrap.csv_files import NODES, RELATIONSHIPS, CsvFile, CsvSnapshotWriter
from daemon.bootstrap.csv_format import (
    encode_cell,
    id_ok,
    key_ok,
    label_ok,
    property_header,
    render_csv,
    string_ok,
    value_type,
)
from daemon.bootstrap.records import SnapshotEdge, SnapshotVertex
from daemon.bootstrap.spool import ChangeSpool
from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY
from daemon.values import INT64_MAX, INT64_MIN, from_pg_json
from tests.stand.opencypher_csv import (
    NODE_FILE,
    RELATIONSHIP_FILE,
    CsvFormatError,
    parse_opencypher_csv,
    parse_scalar,
)

# Text with the characters CSV and the loader care about, plus anything unicode (no lone surrogates: UTF-8).
_SPECIAL = st.sampled_from(
    [",", '"', "\n", "\r", "\r\n", ";", ":", "\\", " ", "\t", "'", "`", "%", "~", "é", "日本", "🚀"]
)
TEXT = st.lists(st.one_of(_SPECIAL, st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)), max_size=6).map(
    "".join
)
NAMES = st.one_of(st.sampled_from(["name", "age", "Person", "KNOWS", "a.b", "x_1"]), TEXT.filter(bool))


def _pg(data_type: str, raw: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return raw.map(lambda value: from_pg_json(data_type, value))


# Values as the value rule hands them over, for every PG_JSON data type the daemon replicates.
PG_VALUES = st.one_of(
    _pg("String", TEXT.filter(lambda text: "\x00" not in text)),  # the value rule refuses NUL (docs/data-model.md)
    _pg("Bool", st.booleans()),
    _pg("Byte", st.integers(-(2**7), 2**7 - 1)),
    _pg("Short", st.integers(-(2**15), 2**15 - 1)),
    _pg("Int", st.integers(-(2**31), 2**31 - 1)),
    _pg("Long", st.integers(INT64_MIN, INT64_MAX)),
    _pg("Float", st.floats(width=32)),  # NaN and infinities included: they become strings
    _pg("Double", st.floats()),
    _pg("Double", st.sampled_from(["NaN", "Infinity", "-Infinity", "1e308", "-0.0"])),
    _pg("Date", st.integers(0, 4_102_444_800_000)),
    _pg("DateTime", st.sampled_from(["2024-01-02", "2024-01-02T03:04:05Z", "2024-01-02T03:04:05.123Z"])),
)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same type; floats bit for bit (-0.0 is not 0.0), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(st.lists(PG_VALUES, min_size=1, max_size=5))
def test_every_csv_value_reads_back_as_itself(values: list[Any]) -> None:
    header = [":ID", ":LABEL"]
    row = ["v1", "L"]
    expected = {}
    for i, value in enumerate(values):
        column = value_type(value)
        if column is None:
            assert isinstance(value, str) and not string_ok(value)
            continue
        header.append(property_header(f"p{i}", column))
        row.append(encode_cell(value, column))
        expected[f"p{i}"] = value
    parsed = parse_opencypher_csv(render_csv(header, [row]).encode())
    assert parsed.errors == []
    assert len(parsed.rows) == 1
    got = parsed.rows[0].props
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert _same(got[key], value), (key, value, got[key])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(TEXT.filter(string_ok), st.integers(INT64_MIN, INT64_MAX), st.floats()), min_size=1))
def test_arrays_read_back_with_separators_escaped(values: list[Any]) -> None:
    column = value_type(values, arrays=True)
    if column is None:  # mixed element types have no array column
        assert len({type(v) for v in values}) > 1
        return
    text = render_csv([":ID", property_header("xs", column)], [["v", encode_cell(values, column)]])
    parsed = parse_opencypher_csv(text)
    assert parsed.errors == []
    assert _same(parsed.rows[0].props["xs"], values)


class _Files:
    def __init__(self) -> None:
        self.files: list[CsvFile] = []

    async def __call__(self, file: CsvFile) -> None:
        await asyncio.sleep(0)
        self.files.append(file)


def _write(vertices: list[SnapshotVertex], edges: list[SnapshotEdge], file_max_bytes: int, tmp_path) -> tuple:
    files = _Files()
    spools = ChangeSpool(tmp_path, name="v"), ChangeSpool(tmp_path, name="e")

    async def main() -> CsvSnapshotWriter:
        writer = CsvSnapshotWriter(
            files, residual_vertices=spools[0], residual_edges=spools[1], file_max_bytes=file_max_bytes
        )
        for start in range(0, len(vertices), 3):
            await writer.add_vertices(vertices[start : start + 3])
        for start in range(0, len(edges), 3):
            await writer.add_edges(edges[start : start + 3])
        await writer.close()
        return writer

    writer = asyncio.run(main())
    residual = [c for spool in spools for chunk in spool.chunks(7) for c in chunk]
    for spool in spools:
        spool.close()
    return files.files, residual, writer


def _rebuild(files: list[CsvFile], residual: list) -> tuple[dict, dict]:
    """Elements from parsed rows plus residual changes, as (id -> (labels, props)), (id -> (type, ends, props))."""
    vertices: dict[str, tuple[set[str], dict[str, Any]]] = {}
    edges: dict[str, tuple[str, str, str, dict[str, Any]]] = {}
    for file in files:
        parsed = parse_opencypher_csv(gzip.decompress(file.data))
        assert parsed.errors == [], parsed.errors
        assert parsed.kind == (NODE_FILE if file.kind == NODES else RELATIONSHIP_FILE)
        assert len(parsed.rows) == file.rows
        for row in parsed.rows:
            assert row.id is not None
            if parsed.kind == NODE_FILE:
                assert row.id not in vertices
                vertices[row.id] = (set(row.labels), dict(row.props))
            else:
                assert row.id not in edges and row.type and row.start and row.end
                edges[row.id] = (row.type, row.start, row.end, dict(row.props))
    for change in residual:
        if change.kind == VERTEX_LABEL:
            vertices.setdefault(change.id, (set(), {}))[0].add(change.key)
        elif change.kind == VERTEX_PROPERTY:
            vertices.setdefault(change.id, (set(), {}))[1][change.key] = change.value
        elif change.kind == EDGE:
            old = edges.get(change.id)
            edges[change.id] = (change.key, change.from_id, change.to_id, old[3] if old else {})
        else:
            assert change.kind == EDGE_PROPERTY
            edges[change.id][3][change.key] = change.value
    return vertices, edges


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[SnapshotVertex], list[SnapshotEdge]]:
    ids = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    vertices = [
        SnapshotVertex(
            vertex_id,
            tuple(draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))),
            draw(st.dictionaries(NAMES, PG_VALUES, max_size=4)),
        )
        for vertex_id in ids
    ]
    edge_ids = draw(st.lists(NAMES, max_size=8, unique=True))
    edges = [
        SnapshotEdge(
            edge_id,
            draw(NAMES),
            draw(st.sampled_from(ids)),
            draw(st.sampled_from(ids)),
            draw(st.dictionaries(NAMES, PG_VALUES, max_size=3)),
        )
        for edge_id in edge_ids
    ]
    return vertices, edges


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=graphs(), file_max_bytes=st.sampled_from([1, 200, 1 << 20]))
def test_rows_plus_residual_rebuild_every_element(graph, file_max_bytes: int, tmp_path) -> None:
    vertices, edges = graph
    files, residual, writer = _write(vertices, edges, file_max_bytes, tmp_path)
    got_vertices, got_edges = _rebuild(files, residual)
    assert got_vertices.keys() == {v.id for v in vertices}
    for v in vertices:
        labels, props = got_vertices[v.id]
        assert labels == set(v.labels)
        assert props.keys() == v.props.keys()
        for key, value in v.props.items():
            assert _same(props[key], value), (v.id, key, value, props[key])
    assert got_edges.keys() == {e.id for e in edges}
    for e in edges:
        edge_type, start, end, props = got_edges[e.id]
        assert (edge_type, start, end) == (e.type, e.from_id, e.to_id)
        assert props.keys() == e.props.keys()
        for key, value in e.props.items():
            assert _same(props[key], value)
    # What CSV can carry does go through CSV: a residual only holds what it must.
    for change in residual:
        if change.kind == VERTEX_PROPERTY and id_ok(change.id) and change.id in got_vertices:
            csv_able = key_ok(change.key) and value_type(change.value) is not None
            whole = not any(label_ok(label) for label in got_vertices[change.id][0])
            assert not csv_able or whole or not id_ok(change.id)
    assert writer.stats.rows[NODES] + writer.stats.residual_vertices == len(vertices)
    assert writer.stats.rows[RELATIONSHIPS] + writer.stats.residual_edges == len(edges)


def test_commas_quotes_and_line_breaks_go_through_csv_not_the_residual(tmp_path) -> None:
    tricky = ["a,b", 'say "hi"', "line1\nline2", "cr\rhere", "crlf\r\nhere", "日本語 🚀", "semi;colon", "'single'"]
    vertices = [SnapshotVertex(f"v{i}", ("L",), {"s": text}) for i, text in enumerate(tricky)]
    vertices.append(SnapshotVertex('id, with "quotes"\nand a line', ("Big Company", "Café"), {"n": 1}))
    edges = [SnapshotEdge('e,"1"', "likes it", "v0", 'id, with "quotes"\nand a line', {"w": 0.5})]
    files, residual, writer = _write(vertices, edges, 1 << 20, tmp_path)
    assert residual == []
    assert writer.stats.files == {NODES: 1, RELATIONSHIPS: 1}
    got_vertices, got_edges = _rebuild(files, residual)
    assert [got_vertices[f"v{i}"][1]["s"] for i in range(len(tricky))] == tricky
    assert got_edges['e,"1"'][:3] == ("likes it", "v0", 'id, with "quotes"\nand a line')


def test_what_csv_cannot_carry_goes_to_the_residual(tmp_path) -> None:
    vertices = [
        SnapshotVertex("v1", ("L", "semi;colon"), {"first name": "x", "ok": "", "pad": " p ", "back": "a\\b"}),
        SnapshotVertex(" v2", ("L",), {"a": 1}),  # id with surrounding white space: whole vertex
        SnapshotVertex("v3", ("a;b",), {"a": 1}),  # no CSV-safe label: whole vertex
        SnapshotVertex("v4", ("L",), {"xs": [1, 2], "k:v": 1, "~x": 2}),
    ]
    edges = [
        SnapshotEdge("e1", "T", "v1", " v2"),  # endpoint written through the residual: whole edge
        SnapshotEdge("e2", "T", "v1", "v4", {"a b": 1, "c": 2}),
    ]
    files, residual, writer = _write(vertices, edges, 1 << 20, tmp_path)
    assert writer.stats.residual_vertices == 2 and writer.stats.residual_edges == 1
    described = {(c.kind, c.id, c.key) for c in residual}
    assert ("vl", "v1", "semi;colon") in described and ("vl", "v1", "L") not in described
    assert {("vp", "v1", k) for k in ("first name", "ok", "pad", "back")} <= described
    assert {("vp", "v4", "xs"), ("vp", "v4", "k:v"), ("vp", "v4", "~x")} <= described
    assert ("e", "e1", "T") in described
    assert ("e", "e2", "T") in described and ("ep", "e2", "a b") in described and ("ep", "e2", "c") not in described
    got_vertices, got_edges = _rebuild(files, residual)
    assert got_vertices["v1"] == ({"L", "semi;colon"}, {"first name": "x", "ok": "", "pad": " p ", "back": "a\\b"})
    assert got_edges["e2"][3] == {"a b": 1, "c": 2}


def test_clashing_property_types_go_to_separate_files(tmp_path) -> None:
    vertices = [
        SnapshotVertex("v1", ("L",), {"age": 1}),
        SnapshotVertex("v2", ("L",), {"age": "one"}),
        SnapshotVertex("v3", ("L",), {"age": 2.5}),
        SnapshotVertex("v4", ("L",), {"age": 3, "name": "x"}),
    ]
    files, residual, _ = _write(vertices, [], 1 << 20, tmp_path)
    assert residual == []
    assert len(files) == 3
    got, _ = _rebuild(files, residual)
    assert [got[f"v{i}"][1]["age"] for i in range(1, 5)] == [1, "one", 2.5, 3]


def test_files_roll_at_the_configured_size(tmp_path) -> None:
    vertices = [SnapshotVertex(f"v{i:04d}", ("L",), {"name": "x" * 50}) for i in range(300)]
    files, _, writer = _write(vertices, [], 2000, tmp_path)
    assert len(files) > 5
    assert sum(f.rows for f in files) == 300
    assert all(f.csv_bytes < 2000 + 400 for f in files)
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert writer.stats.gzip_bytes == sum(len(f.data) for f in files)


@pytest.mark.parametrize(
    ("text", "type_name", "value"),
    [
        ("TRUE", "bool", True),
        ("-128", "byte", -128),
        ("Infinity", "double", math.inf),
        ("1e+100", "double", 1e100),
        ("2024-01-02T03:04:05Z", "datetime", "2024-01-02T03:04:05Z"),
    ],
)
def test_stand_reader_types(text: str, type_name: str, value: Any) -> None:
    assert parse_scalar(text, type_name) == value


@pytest.mark.parametrize(("text", "type_name"), [("INF", "double"), ("yes", "bool"), ("128", "byte"), ("1.5", "long")])
def test_stand_reader_refuses_bad_cells(text: str, type_name: str) -> None:
    with pytest.raises(ValueError):
        parse_scalar(text, type_name)


def test_stand_reader_reports_records_and_headers() -> None:
    parsed = parse_opencypher_csv(':ID,:LABEL,age:Int,name\r\nv1,L,1,a\r\nv2,L,x,b\r\nv3,L,2\r\n"v4",L;M,,"q, r"\r\n')
    assert [r.id for r in parsed.rows] == ["v1", "v4"]
    assert parsed.rows[1].labels == ["L", "M"] and parsed.rows[1].props == {"name": "q, r"}
    assert [(e.record, e.code) for e in parsed.errors] == [(2, "DATATYPE_MISMATCH"), (3, "PARSING_ERROR")]
    for bad in (":LABEL,name\r\nL,x\r\n", ":ID,first name\r\n", ":ID,x:Nope\r\n", ":ID,:START_ID,:END_ID\r\n"):
        with pytest.raises(CsvFormatError):
            parse_opencypher_csv(bad)
    escaped = parse_opencypher_csv(":ID,a\\:b:Long\r\nv,5\r\n")
    assert escaped.rows[0].props == {"a:b": 5}


def test_past_max_tables_clashing_properties_go_to_the_residual(tmp_path) -> None:
    vertices = [
        SnapshotVertex("v1", ("L",), {"a": 1}),
        SnapshotVertex("v2", ("L",), {"a": "x"}),
        SnapshotVertex("v3", ("L",), {"a": 1.5}),
        SnapshotVertex("v4", ("L",), {"a": True}),
        SnapshotVertex("v5", ("L",), {"a": 5, "b": "s"}),
        SnapshotVertex("v6", ("L",), {"a": 7, "b": False}),  # clashes with every table: b goes to the residual
    ]
    files, residual, _ = _write(vertices, [], 1 << 20, tmp_path)
    assert len(files) == 4
    assert [(c.kind, c.id, c.key, c.value) for c in residual] == [("vp", "v6", "b", False)]
    got, _ = _rebuild(files, residual)
    assert got["v6"][1] == {"a": 7, "b": False}
