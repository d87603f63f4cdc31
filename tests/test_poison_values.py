"""Poison values and names (defect 7, translation part): each input below once raised something other than the
parser's own rejection (or was accepted and failed later, in the sink or the checkpoint store). Now each is
refused at translation with the reason, so the source dead-letters it with its position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.config import load_config
from daemon.deadletter import DeadLetterFile
from daemon.mapping import ItemMapper, UnmappableItem
from daemon.names import InvalidName, decode_falkordb_name, encode_falkordb_name, quote_falkordb, quote_opencypher
from daemon.sources.pgjson import MalformedRecord, translate_record
from daemon.values import UnsupportedValue, dynamodb_number, from_dynamodb, from_pg_json
from tests.stand.daemon_process import DaemonProcess
from tests.test_mapping import SHIPPED


def nested(tag: str, depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"S": "x"}
    for _ in range(depth):
        value = {"L": [value]} if tag == "L" else {"M": {"k": value}}
    return value


@pytest.mark.parametrize(
    ("data_type", "raw", "reason"),
    [
        ("Date", 10**20, "outside the years 1 to 9999"),  # was OSError (EOVERFLOW)
        ("DateTime", -(10**15), "outside the years 1 to 9999"),  # was ValueError (year out of range)
        ("Double", 10**400, "beyond the 64-bit float range"),  # was OverflowError
        ("Float", "1e400", "beyond the 64-bit float range"),  # was replicated as "Infinity"
        # was ValueError (repr of the value for the message)
        pytest.param("Long", 10**5000, "does not fit in 64 bits", id="Long-10**5000"),
        ("Long", "9" * 5000, "does not fit in 64 bits"),  # a 5,000-character reason
        ("Long", "1_000", "is not an integer"),  # was read as 1000
        ("Int", "\u0663", "is not an integer"),  # an Arabic-Indic digit, was read as 3
        ("Double", "1_0", "is not a number"),  # was read as 10.0
        ("String", "a\x00b", "NUL"),  # FalkorDB cuts the query at the NUL: the batch failed in the sink
        ("String", "a\ud800", "lone surrogate U+D800"),  # UnicodeEncodeError in the FalkorDB client
        ("Date", "2024\x00", "NUL"),
        ([1], 1, "dataType must be a string"),  # was TypeError (unhashable)
    ],
)
def test_pg_json_poison_values_are_refused_with_the_reason(data_type: Any, raw: Any, reason: str) -> None:
    with pytest.raises(UnsupportedValue) as err:
        from_pg_json(data_type, raw)
    assert reason in str(err.value) and len(str(err.value)) < 300


def test_pg_json_dates_cover_years_1_to_9999_exactly() -> None:
    assert from_pg_json("Date", 1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert from_pg_json("Date", -1) == "1969-12-31T23:59:59.999Z"
    assert from_pg_json("Date", -62135596800000) == "0001-01-01T00:00:00.000Z"  # strftime gave "1-01-01..."
    assert from_pg_json("Date", 253402300799999) == "9999-12-31T23:59:59.999Z"
    with pytest.raises(UnsupportedValue):
        from_pg_json("Date", 253402300799999 + 1)


def record(**data: Any) -> dict[str, Any]:
    body = {"id": "v1", "type": "vp", "key": "k", "value": {"value": "x", "dataType": "String"}} | data
    return {"commitTimestamp": 1, "eventId": {"commitNum": 5, "opNum": 1}, "data": body, "op": "ADD"}


@pytest.mark.parametrize(
    ("rec", "reason"),
    [
        ([], "a record is a JSON object"),  # was AttributeError
        (record() | {"eventId": {"commitNum": 5, "opNum": True}}, "integer commitNum and opNum"),  # was accepted
        (record() | {"eventId": {"commitNum": 2**64, "opNum": 1}}, "from 0 to 2**63 - 1"),  # OverflowError in SQLite
        (record() | {"eventId": {"commitNum": -1, "opNum": 1}}, "from 0 to 2**63 - 1"),
        (record(value={"value": 10**20, "dataType": "Date"}), "outside the years"),  # was OSError
        (record(id="v\x00"), "NUL"),  # the id is a value too (the id property)
        (record(id="v\udc80"), "lone surrogate"),
        (record(type="vl", value={"value": "L\ud800"}), "lone surrogate"),
        (record(type="e", value={"value": "E"}, **{"from": "a\x00", "to": "b"}), "NUL"),
        (record(key="k\udfff"), "lone surrogate"),
    ],
)
def test_pg_json_poison_records_are_malformed_with_the_reason(rec: Any, reason: str) -> None:
    with pytest.raises(MalformedRecord) as err:
        translate_record(rec)
    assert reason in err.value.reason


def test_pg_json_commit_timestamps_out_of_range_read_as_unknown() -> None:
    # 10**400 ms reached the pipeline, whose latency metric divides it by 1000: OverflowError there
    for stamp in (10**400, -5, True, 2.5):
        assert translate_record(record() | {"commitTimestamp": stamp}).commit_ms == 0


def test_pg_json_names_with_nul_are_kept_for_the_name_rule() -> None:
    change = translate_record(record(key="k\x00y"))
    assert change.key == "k\x00y" and encode_falkordb_name(change.key) == "k%00y"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"N": "NaN"}, "is not a number"),
        ({"N": "Infinity"}, "is not a number"),
        ({"N": "1_0"}, "is not a number"),  # Decimal took it
        ({"N": 5}, "N value is int"),  # was TypeError
        ({"B": 5}, "not bytes or base64"),  # was bytes(5): five zero bytes
        ({"B": "not base64!"}, "not base64"),  # was replicated as such
        ({"BS": [[1, 2]]}, "BS member"),
        ({"SS": [1, "a"]}, "SS member 1 is int"),  # was TypeError (sorting)
        ({"SS": "ab"}, "not a list"),  # was ["a", "b"]
        ({"NS": ["x"]}, "is not a number"),  # was decimal.InvalidOperation
        ({"L": 5}, "L value is int"),  # was TypeError
        ({"M": {1: {"S": "a"}}}, "M key 1 is int"),  # was TypeError from orjson
        ({"M": {"a": {"S": "a", "N": "1"}}}, "exactly one type tag"),  # was ValueError (unpacking)
        ({"M": {"a": 5}}, "exactly one type tag"),  # was AttributeError
        ({"L": [{}]}, "exactly one type tag"),  # was ValueError (unpacking)
        ({"L": [{"S": "\ud800"}]}, "cannot be written as JSON text"),  # was TypeError from orjson
        ({"S": "\ud800"}, "lone surrogate"),  # was accepted, then UnicodeEncodeError in the sink
        ({"S": "a\x00"}, "NUL"),
        ({"S": 5}, "S value is int"),
        ({"BOOL": "yes"}, "BOOL value is str"),
        (nested("L", 5000), "nest deeper than 32"),  # was RecursionError
        (nested("M", 33), "nest deeper than 32"),
        (5, "exactly one type tag"),  # was TypeError (len)
    ],
)
def test_dynamodb_poison_values_are_refused_with_the_reason(value: Any, reason: str) -> None:
    with pytest.raises(UnsupportedValue) as err:
        from_dynamodb(value)
    assert reason in str(err.value)


def test_dynamodb_values_inside_documents_keep_nul_as_an_escape() -> None:
    assert from_dynamodb({"L": [{"S": "a\x00"}]}) == '["a\\u0000"]'
    assert from_dynamodb(nested("L", 32)).count("[") == 32


@pytest.mark.parametrize("text", ["1e999999999", "-1e-999999999", "1E+999", "9" * 5000])
def test_dynamodb_huge_exponents_and_long_numbers_stay_text(text: str) -> None:
    assert dynamodb_number(text) == text


def test_dynamodb_poison_items_are_unmappable() -> None:
    mapper = ItemMapper(load_config(SHIPPED).sources[0])

    def changes(new: Any, old: Any = None, **kw: Any) -> Any:
        keys = {"PK": {"S": "USER#ada"}, "SK": {"S": "PROFILE"}}
        return mapper.changes("INSERT", keys=keys, new=new, old=old, position=("1",), partition="s", **kw)

    profile = {"PK": {"S": "USER#ada"}, "SK": {"S": "PROFILE"}}
    cases = [
        ([1, 2], "maps of attribute values"),  # was AttributeError
        ({"PK": {"S": "USER#a\x00"}, "SK": {"S": "PROFILE"}}, "NUL"),  # the id
        (profile | {"name": {"S": "a\ud800"}}, "lone surrogate"),
        (profile | {"n\ud800": {"S": "a"}}, "not valid Unicode"),  # an attribute name (a property key)
        (profile | {"age": 7}, "exactly one type tag"),  # was TypeError
        (profile | {"age": {"N": "1_0"}}, "is not a number"),
    ]
    # an attribute that is not an attribute value fails the rule's tests (was TypeError in `begins_with`)
    assert changes({"PK": "USER#ada", "SK": {"S": "PROFILE"}}, commit_ms=0).skipped == "no_rule"
    for new, reason in cases:
        with pytest.raises(UnmappableItem) as err:
            changes(new, commit_ms=0)
        assert reason in err.value.reason, (new, err.value.reason)


def test_dynamodb_ttl_mark_with_an_impossible_time_reads_as_unknown() -> None:
    cfg = load_config(SHIPPED).sources[0].model_copy(update={"ttl_deletes": "mark"})
    old = {"PK": {"S": "USER#ada"}, "SK": {"S": "PROFILE"}}
    mapper = ItemMapper(cfg)
    # commit_ms out of range reads as unknown (0), as for PG_JSON: the mark is the epoch, not an OverflowError
    (mark,) = mapper.changes(
        "REMOVE", keys=old, new=None, old=old, position=("1",), partition="s", commit_ms=10**400, ttl=True
    ).changes
    assert mark.value == "1970-01-01T00:00:00Z"


def test_names_with_nul_are_encoded_and_lone_surrogates_refused() -> None:
    assert encode_falkordb_name("R\x00S") == "R%00S"
    assert quote_falkordb("a%00`\x00") == "`a%2500%60%00`"
    for name in ("R\x00S", "%00", "a%2500%60%00", "\x00%\x00`"):
        assert decode_falkordb_name(encode_falkordb_name(name)) == name
    assert quote_opencypher("R\x00S") == "`R\x00S`"
    for quote in (quote_falkordb, quote_opencypher, encode_falkordb_name):
        with pytest.raises(InvalidName, match="lone surrogate U\\+D800"):
            quote("L\ud800")


# -- end to end: names with NUL reach FalkorDB encoded; values no target can hold are dead-lettered ----------


def test_names_with_nul_replicate_into_falkordb_and_poison_values_are_dead_lettered(tmp_path: Path) -> None:
    from tests.test_file_source import file_config, replica  # the replica's names are decoded

    def rec(n: int, kind: str, element: str, key: str, value: Any, data_type: str = "String", **extra: Any) -> dict:
        data = {"id": element, "type": kind, "key": key, "value": {"value": value, "dataType": data_type}, **extra}
        return {"commitTimestamp": 1, "eventId": {"commitNum": n, "opNum": 1}, "data": data, "op": "ADD"}

    records = [
        rec(1, "vl", "a", "label", "Per\x00son"),
        rec(2, "vl", "b", "label", "X"),
        rec(3, "vp", "a", "k\x00y", "v"),
        rec(4, "e", "e1", "label", "R\x00S", **{"from": "a", "to": "b"}),
        rec(5, "ep", "e1", "w\x00", 5, "Int"),
        rec(6, "vp", "b", "bad", "nul\x00value"),  # dead-lettered: FalkorDB cannot hold it
        rec(7, "vp", "b", "when", 10**18, "Date"),  # dead-lettered: no such date
    ]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    body += b'{"eventId": {"commitNum": 8, "opNum": 1}, "data": {"id": "\\ud800"}}\n'  # a lone surrogate: not JSON
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(body)
    daemon = DaemonProcess(file_config(tmp_path, capture, on_malformed="dead_letter"))
    assert daemon.wait(60) == 0, daemon.log_tail()
    dead = [orjson.loads(x) for x in (tmp_path / "data" / "dead-letter.jsonl").read_bytes().splitlines()]
    assert [d["line"] for d in dead] == [6, 7, 8], dead
    assert "NUL" in dead[0]["reason"] and "outside the years" in dead[1]["reason"]
    graph = replica(tmp_path / "data")
    assert graph.vertices["a"].labels == {"Per\x00son"} and graph.vertices["a"].props == {"k\x00y": "v"}
    (edge,) = graph.edges.values()
    assert (edge.type, edge.props) == ("R\x00S", {"w\x00": 5})


@pytest.mark.parametrize("record", [{"id": "\ud800"}, {"value": 10**20}, {"value": 10**5000}])
def test_records_the_json_module_parses_can_be_dead_lettered(record: dict[str, Any], tmp_path: Path) -> None:
    # botocore parses stream pages with the json module: a lone surrogate or a 65-bit integer in a rejected
    # record made the dead-letter write raise TypeError (orjson), so the source failed on it after every restart
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    dead.write(stage="translate", source="s", reason="r", entries=[{"record": record}])
    assert json.loads(dead.path.read_bytes())["source"] == "s"


def test_capture_writes_records_orjson_refuses_as_the_stream_sent_them(tmp_path: Path) -> None:
    from daemon.capture import json_line
    from daemon.sources.file import FileSource, _Reader

    # was TypeError out of `graph-replicator capture` (a traceback, and the capture stopped there)
    records = [record() | {"eventId": {"commitNum": 1, "opNum": 1}, "data": {"id": "\ud800"}}]
    records.append(record() | {"eventId": {"commitNum": 2, "opNum": 1}, "data": {"id": "v", "value": {"value": 2**64}}})
    records.append(record() | {"eventId": {"commitNum": 3, "opNum": 1}})
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"".join(json_line(r) for r in records))
    assert json.loads(path.read_bytes().splitlines()[0])["data"]["id"] == "\ud800"
    dead = DeadLetterFile(tmp_path / "dead.jsonl")
    source = FileSource("f", path=path, on_malformed="dead_letter", dead_letters=dead)
    reader = _Reader(source, path, None)
    batch = reader.next_batch()
    reader.close()
    assert batch.error is None and [c.position for c in batch.changes] == [(3, 1)]
    reasons = [json.loads(line)["reason"] for line in dead.path.read_bytes().splitlines()]
    assert len(reasons) == 2 and "not valid JSON" in reasons[0], reasons
