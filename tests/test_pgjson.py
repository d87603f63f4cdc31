"""PG_JSON record translation and the value rule (daemon.sources.pgjson, daemon.values, daemon.names)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY
from daemon.names import InvalidName, decode_falkordb_name, encode_falkordb_name, quote_opencypher
from daemon.sources.pgjson import MalformedRecord, translate_record
from daemon.values import UnsupportedValue, from_pg_json


def record(kind: str, key: str, value: object, data_type: str = "String", op: str = "ADD", **extra: object) -> dict:
    return {
        "commitTimestamp": 1_700_000_000_123,
        "eventId": {"commitNum": 7, "opNum": 3},
        "data": {
            "id": "x1",
            "type": kind,
            "key": key,
            "value": {"value": value, "dataType": data_type},
            **extra,
        },
        "op": op,
        "isLastOp": True,
    }


def test_vertex_label_and_property() -> None:
    label = translate_record(record("vl", "label", "Person"))
    assert (label.kind, label.add, label.id, label.key, label.position) == (
        VERTEX_LABEL,
        True,
        "x1",
        "Person",
        (7, 3),
    )
    assert label.commit_ms == 1_700_000_000_123
    prop = translate_record(record("vp", "age", 42, "Int", op="REMOVE"))
    assert (prop.kind, prop.add, prop.key, prop.value) == (VERTEX_PROPERTY, False, "age", 42)


def test_edge_and_edge_property() -> None:
    edge = translate_record(record("e", "label", "KNOWS", **{"from": "a", "to": "b"}))
    assert (edge.kind, edge.key, edge.from_id, edge.to_id) == (EDGE, "KNOWS", "a", "b")
    prop = translate_record(record("ep", "since", 2001, "Long"))
    assert (prop.kind, prop.key, prop.value, prop.from_id) == (EDGE_PROPERTY, "since", 2001, None)


def test_boto3_renamed_timestamp_is_read() -> None:
    rec = record("vl", "label", "A")
    rec["commitTimestampInMillis"] = rec.pop("commitTimestamp")
    assert translate_record(rec).commit_ms == 1_700_000_000_123


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda r: r.pop("eventId"), "eventId"),
        (lambda r: r.update(op="UPSERT"), "op must be"),
        (lambda r: r["data"].update(type="vx"), "unknown record type"),
        (lambda r: r["data"].update(id=""), "data.id"),
        (lambda r: r["data"].pop("value"), "data.value"),
        (lambda r: r["data"]["value"].update(dataType="Geo"), "unsupported dataType"),
        (lambda r: r["data"]["value"].update(value="x", dataType="Int"), "not an integer"),
        (lambda r: r["data"]["value"].update(value=2**64, dataType="Long"), "64 bits"),
    ],
)
def test_malformed_records_name_the_reason_and_position(mutate, fragment: str) -> None:
    rec = record("vp", "k", 1, "Int")
    mutate(rec)
    with pytest.raises(MalformedRecord) as info:
        translate_record(rec)
    assert fragment in info.value.reason
    if "eventId" in rec:
        assert info.value.position == (7, 3)


def test_edge_without_endpoints_is_malformed() -> None:
    with pytest.raises(MalformedRecord, match="from and to"):
        translate_record(record("e", "label", "KNOWS"))


@pytest.mark.parametrize(
    ("data_type", "raw", "expected"),
    [
        ("String", "é`x", "é`x"),
        ("Bool", True, True),
        ("Boolean", "false", False),
        ("Byte", 7, 7),
        ("Short", -300, -300),
        ("Int", "12", 12),
        ("Long", -(2**63), -(2**63)),
        ("Float", 1.5, 1.5),
        ("Double", "NaN", "NaN"),
        ("Double", "-Infinity", "-Infinity"),
        ("Double", float("inf"), "Infinity"),
        ("Date", "2024-02-29T10:00:00Z", "2024-02-29T10:00:00Z"),
        ("Date", 1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
    ],
)
def test_value_rule(data_type: str, raw: object, expected: object) -> None:
    assert from_pg_json(data_type, raw) == expected


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integers_round_trip(value: int) -> None:
    assert from_pg_json("Long", value) == value
    assert from_pg_json("Long", str(value)) == value


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_finite_or_named(value: float) -> None:
    out = from_pg_json("Double", value)
    if math.isfinite(value):
        assert out == value
    else:
        assert out in ("NaN", "Infinity", "-Infinity")


@given(st.one_of(st.booleans(), st.none(), st.lists(st.integers())))
def test_wrong_json_types_are_rejected(raw: object) -> None:
    with pytest.raises(UnsupportedValue):
        from_pg_json("String", raw)


@given(st.text(min_size=1))
def test_falkordb_name_encoding_round_trips_and_has_no_backtick(name: str) -> None:
    stored = encode_falkordb_name(name)
    assert "`" not in stored
    assert decode_falkordb_name(stored) == name


@given(st.text(min_size=1), st.text(min_size=1))
def test_falkordb_name_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_falkordb_name(a) != encode_falkordb_name(b)


@given(st.text(min_size=1))
def test_opencypher_quoting_doubles_backticks(name: str) -> None:
    quoted = quote_opencypher(name)
    assert quoted.startswith("`") and quoted.endswith("`")
    assert quoted[1:-1].replace("``", "").count("`") == 0


def test_empty_names_are_refused() -> None:
    with pytest.raises(InvalidName):
        quote_opencypher("")
    with pytest.raises(InvalidName):
        encode_falkordb_name("")
