"""Every parser against hostile input (hypothesis): PG_JSON records, the PG_JSON and DynamoDB value rules, the
DynamoDB item mapper and capture-file lines. The contract: whatever the input, the parser gives its normal
result or raises its own rejection (`MalformedRecord`, `UnsupportedValue`, `UnmappableItem`, a dead letter or
`CaptureError`), never another exception; and what it gives, every target can hold.

Inputs are both structured-but-hostile (the right shape with wrong types, huge / negative / bool numbers, NaN,
deep nesting, empty strings, NUL, lone surrogates) and arbitrary JSON. `FUZZ_EXAMPLES=5000` runs them harder.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from daemon.config import load_config
from daemon.deadletter import DeadLetterFile
from daemon.mapping import ItemMapper, Outcome, UnmappableItem
from daemon.model import GraphChange
from daemon.names import InvalidName, check_name, decode_falkordb_name, encode_falkordb_name
from daemon.sources.file import CaptureError, FileSource, _Reader
from daemon.sources.pgjson import MalformedRecord, _careful, translate_record
from daemon.values import (
    ABSENT,
    INT64_MAX,
    INT64_MIN,
    UnsupportedValue,
    dynamodb_number,
    from_dynamodb,
    from_pg_json,
    show,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(FUZZ, max_examples=max(30, EXAMPLES * 2 // 3))  # inputs that take hypothesis long to build
SHIPPED = Path(__file__).parent.parent / "config" / "dynamodb-social.toml"

# -- hostile building blocks ----------------------------------------------------------------------------

SPECIAL_CHARS = ["\x00", "\ud800", "\udfff", "`", "%", "0", "2", "5", "6", "\n", "\u2028", "\ufeff", "é", "😀"]
hostile_text = st.one_of(
    st.text(max_size=12),
    st.text(st.one_of(st.characters(), st.sampled_from(SPECIAL_CHARS)), max_size=12),
    st.sampled_from(["", "ADD", "REMOVE", "vl", "vp", "e", "ep", "String", "Long", "Date", "Double", "NaN", "1e400"]),
)
hostile_int = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, INT64_MAX, INT64_MAX + 1, INT64_MIN, INT64_MIN - 1, 10**20, -(10**20), 10**400]),
)
hostile_float = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), hostile_int, hostile_float, hostile_text)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(hostile_text, inner, max_size=4),
    ),
    max_leaves=10,
)


def deep(depth: int, leaf: Any, kind: str = "list") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right thing, sometimes anything."""
    return st.one_of(valid, valid, json_like)


# -- what every target can hold -------------------------------------------------------------------------


def holdable_text(text: Any, *, nul: bool = False) -> bool:
    if not isinstance(text, str):
        return False
    if "\x00" in text and not nul:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def assert_holdable_value(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        assert INT64_MIN <= value <= INT64_MAX, value
    elif isinstance(value, float):
        assert math.isfinite(value), value
    else:
        assert holdable_text(value), repr(value)


def assert_holdable_change(change: GraphChange) -> None:
    assert isinstance(change, GraphChange)
    for part in change.position:
        assert part.__class__ in (int, str)
        if isinstance(part, int):
            assert 0 <= part <= INT64_MAX
    assert change.commit_ms.__class__ is int and 0 <= change.commit_ms <= INT64_MAX
    assert holdable_text(change.id) and change.id
    for endpoint in (change.from_id, change.to_id):
        assert endpoint is None or (holdable_text(endpoint) and endpoint)
    assert holdable_text(change.key, nul=True) and change.key
    check_name(change.key)
    assert decode_falkordb_name(encode_falkordb_name(change.key)) == change.key
    if isinstance(change.value, dict):  # whole elements (DynamoDB items)
        for key, value in change.value.items():
            check_name(key)
            assert_holdable_value(value)
    elif change.value is not None:
        assert_holdable_value(change.value)
    orjson.dumps(change.value)  # the Neptune sink's JSON parameters


# -- PG_JSON records -------------------------------------------------------------------------------------

data_types = st.sampled_from(
    ["String", "Bool", "Boolean", "Byte", "Short", "Int", "Integer", "Long", "Float", "Double", "Date", "DateTime"]
)


@st.composite
def pg_records(draw: st.DrawFn) -> Any:
    kind = draw(either(st.sampled_from(["vl", "vp", "e", "ep"])))
    data: dict[str, Any] = {
        "id": draw(either(hostile_text)),
        "type": kind,
        "key": draw(either(hostile_text)),
        "value": draw(either(st.fixed_dictionaries({"value": scalars, "dataType": either(data_types)}))),
    }
    if draw(st.booleans()):
        data["from"], data["to"] = draw(either(hostile_text)), draw(either(hostile_text))
    record: dict[str, Any] = {
        "eventId": draw(either(st.fixed_dictionaries({"commitNum": hostile_int, "opNum": hostile_int}))),
        "data": draw(st.one_of(st.just(data), st.just(data), json_like)),
        "op": draw(either(st.sampled_from(["ADD", "REMOVE"]))),
        "isLastOp": draw(scalars),
    }
    stamp = draw(st.sampled_from(["commitTimestamp", "commitTimestampInMillis", None]))
    if stamp:
        record[stamp] = draw(st.one_of(hostile_int, scalars))
    for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=2)):  # fields missing
        record.pop(key, None)
    return record


def translate_outcome(record: Any) -> tuple[str, Any]:
    try:
        change = translate_record(record, "p")
    except MalformedRecord as exc:
        assert exc.reason and isinstance(exc.reason, str)
        exc.reason.encode("utf-8")  # logged and dead-lettered as UTF-8 JSON
        assert exc.position is None or (len(exc.position) == 2 and all(p.__class__ is int for p in exc.position))
        return "rejected", exc.position
    assert_holdable_change(change)
    return "ok", change


def careful_outcome(record: Any) -> tuple[str, Any]:
    try:
        return "ok", _careful(record, "p")
    except MalformedRecord as exc:
        return "rejected", exc.position


@HEAVY
@given(pg_records())
@example(
    {
        "eventId": {"commitNum": 1, "opNum": 2},
        "op": "ADD",
        "data": {"id": "v", "type": "vp", "key": "k", "value": {"value": 10**20, "dataType": "Date"}},
    }
)
@example(
    {
        "eventId": {"commitNum": 1, "opNum": 2},
        "op": "ADD",
        "data": {"id": "v", "type": "vp", "key": "k", "value": {"value": 10**400, "dataType": "Double"}},
    }
)
@example(
    {
        "eventId": {"commitNum": 1, "opNum": True},
        "op": "ADD",
        "data": {"id": "v", "type": "vl", "value": {"value": "L"}},
    }
)
def test_pg_json_hostile_records_translate_or_are_rejected(record: Any) -> None:
    got = translate_outcome(record)
    # The fast path is the careful path, inlined: both must come to the same answer.
    assert got == careful_outcome(record)


@FUZZ
@given(json_like)
def test_pg_json_arbitrary_json_translates_or_is_rejected(record: Any) -> None:
    translate_outcome(record)


def test_pg_json_deeply_nested_values_are_rejected() -> None:
    for value in (deep(100_000, 1), deep(5_000, "x", "map")):
        record = {
            "eventId": {"commitNum": 1, "opNum": 1},
            "op": "ADD",
            "data": {"id": "v", "type": "vp", "key": "k", "value": {"value": value, "dataType": "String"}},
        }
        assert translate_outcome(record)[0] == "rejected"


@FUZZ
@given(either(data_types), scalars)
def test_pg_json_value_rule_converts_or_rejects(data_type: Any, raw: Any) -> None:
    try:
        value = from_pg_json(data_type, raw)
    except UnsupportedValue as exc:
        assert str(exc) and len(str(exc)) < 400
        str(exc).encode("utf-8")
        return
    assert_holdable_value(value)


# -- DynamoDB values -------------------------------------------------------------------------------------

number_text = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,25}(\.[0-9]{0,25})?([eE][+-]?[0-9]{1,12})?\Z"),
    st.sampled_from(
        [
            "1e999999999",
            "-1e-999999999",
            "1e100000",
            "NaN",
            "-Infinity",
            "sNaN",
            "1_0",
            "٣",
            "0x10",
            "9" * 5000,
            " 1 ",
            "",
            "-",
            ".",
            "1e",
            "1E+125",
            "9.9999999999999999999999999999999999999E+125",
        ]
    ),
    hostile_text,
)


@FUZZ
@given(number_text)
def test_dynamodb_numbers_convert_or_are_rejected_quickly(text: str) -> None:
    start = time.perf_counter()
    try:
        value = dynamodb_number(text)
    except UnsupportedValue:
        return
    finally:
        assert time.perf_counter() - start < 0.5, text
    assert_holdable_value(value)
    if isinstance(value, str):
        assert value == text.strip()


TAGS = ["S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS", "L", "M", "X", ""]
payloads = st.one_of(
    hostile_text,
    number_text,
    st.binary(max_size=8),
    st.lists(st.one_of(hostile_text, number_text, st.binary(max_size=4), scalars), max_size=3),
    scalars,
)
attribute_values = st.recursive(
    st.one_of(
        st.builds(lambda tag, raw: {tag: raw}, st.sampled_from(TAGS), payloads),
        st.dictionaries(st.sampled_from(TAGS), payloads, max_size=3),  # no tag, or several
        scalars,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: {"L": v}),
        st.dictionaries(hostile_text, inner, max_size=3).map(lambda v: {"M": v}),
        st.dictionaries(st.one_of(hostile_text, st.integers()), inner, max_size=2).map(lambda v: {"M": v}),
    ),
    max_leaves=10,
)


def value_outcome(value: Any) -> Any:
    try:
        got = from_dynamodb(value)
    except UnsupportedValue as exc:
        assert str(exc) and len(str(exc)) < 600
        str(exc).encode("utf-8")
        return UnsupportedValue
    if got is not ABSENT:
        assert_holdable_value(got)
        if isinstance(value, dict) and next(iter(value)) in ("SS", "NS", "BS", "L", "M"):
            orjson.loads(got)  # JSON text
    return got


@FUZZ
@given(attribute_values)
@example({"N": "1e999999999"})
@example({"B": "not base64!"})
@example({"SS": [1, "a"]})
@example({"M": {"a": {"S": "\ud800"}}})
def test_dynamodb_hostile_values_convert_or_are_rejected(value: Any) -> None:
    value_outcome(value)


def test_dynamodb_deeply_nested_values_are_rejected() -> None:
    value: Any = {"S": "x"}
    for _ in range(50_000):
        value = {"L": [value]}
    assert value_outcome(value) is UnsupportedValue
    value = {"S": "x"}
    for _ in range(50_000):
        value = {"M": {"k": value}}
    assert value_outcome(value) is UnsupportedValue


# -- DynamoDB items through the mapper -------------------------------------------------------------------

_SOCIAL = load_config(SHIPPED).sources[0]
_MAPPERS = [
    ItemMapper(_SOCIAL),
    ItemMapper(_SOCIAL.model_copy(update={"ttl_deletes": "mark", "vertex_removes": "detach"})),
]
key_text = st.one_of(
    st.builds(lambda p, s: p + s, st.sampled_from(["USER#", "POST#", "FOLLOWS#", "LIKES#", "X"]), hostile_text)
)


@st.composite
def images(draw: st.DrawFn) -> Any:
    item = {
        "PK": draw(either(st.builds(lambda t: {"S": t}, key_text))),
        "SK": draw(either(st.one_of(st.just({"S": "PROFILE"}), st.builds(lambda t: {"S": t}, key_text)))),
    }
    for _ in range(draw(st.integers(0, 3))):
        item[draw(hostile_text)] = draw(attribute_values)
    for key in draw(st.lists(st.sampled_from(["PK", "SK"]), max_size=1)):
        del item[key]
    return draw(st.one_of(st.just(item), st.just(item), st.just(item), json_like))


@HEAVY
@given(
    st.sampled_from(["INSERT", "MODIFY", "REMOVE", "", None]),
    st.one_of(st.none(), images()),
    st.one_of(st.none(), images()),
    st.booleans(),
    st.one_of(st.integers(0, 2**41), hostile_int),
)
def test_dynamodb_hostile_items_map_or_are_rejected(event: Any, new: Any, old: Any, ttl: bool, commit_ms: int) -> None:
    keys = new if isinstance(new, dict) else old if isinstance(old, dict) else {}
    keys = {k: v for k, v in keys.items() if k in ("PK", "SK")}
    for mapper in _MAPPERS:
        try:
            outcome = mapper.changes(
                event, keys=keys, new=new, old=old, position=("1",), partition="s", commit_ms=commit_ms, ttl=ttl
            )
        except UnmappableItem as exc:
            assert exc.reason
            exc.reason.encode("utf-8")
            continue
        assert isinstance(outcome, Outcome)
        for change in outcome.changes:
            assert_holdable_change(change)
    try:  # the bootstrap's Scan reader maps items one at a time
        element = _MAPPERS[0].element(new)
    except UnmappableItem as exc:
        exc.reason.encode("utf-8")
    else:
        assert element is None or (holdable_text(element.id) and all(map(check_name, element.properties or {})))


# -- names -----------------------------------------------------------------------------------------------


@FUZZ
@given(hostile_text)
def test_names_are_encoded_injectively_or_refused(name: str) -> None:
    try:
        stored = encode_falkordb_name(name)
    except InvalidName:
        assert not holdable_text(name, nul=True) or not name
        return
    assert "`" not in stored and "\x00" not in stored and holdable_text(stored)
    assert decode_falkordb_name(stored) == name


# -- capture-file lines ----------------------------------------------------------------------------------


def _dump(value: Any) -> bytes:
    """JSON text by the standard library (big integers, NaN and lone surrogates as `\\ud800` escapes included)."""
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError, RecursionError):
        return b"{"


line_values = st.one_of(
    pg_records().map(_dump),
    st.lists(pg_records(), max_size=3).map(lambda rs: _dump({"records": rs, "lastEventId": {}})),
    st.lists(json_like, max_size=3).map(lambda rs: _dump({"records": rs})),
    json_like.map(_dump),
    st.binary(max_size=40),
    st.sampled_from([b"", b"   ", b"\xff\xfe", b'{"records": 5}', b'"\\ud800"', b"[" * 5000, b'{"a": 1e999}']),
)


@settings(FUZZ, max_examples=max(30, EXAMPLES // 3))
@given(
    st.lists(line_values, max_size=6),
    st.sampled_from(["plain", "gzip", "gzip-truncated", "gzip-corrupt", "gzip-members"]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_capture_lines_become_changes_dead_letters_or_a_capture_error(
    lines: list[bytes], packing: str, dead_letter: bool, seed: int
) -> None:
    body = b"\n".join(lines)
    if packing == "gzip-members":
        body = b"".join(gzip.compress(line + b"\n") for line in lines)
    elif packing != "plain":
        body = gzip.compress(body)
        assume(len(body) > 12)
        if packing == "gzip-truncated":
            body = body[: len(body) // 2]
        elif packing == "gzip-corrupt":
            at = 10 + seed % (len(body) - 10)
            body = body[:at] + bytes([body[at] ^ (1 + seed % 255)]) + body[at + 1 :]
    with tempfile.TemporaryDirectory(prefix="fuzz-capture-") as tmp:
        path = Path(tmp) / "capture.jsonl"
        path.write_bytes(body)
        dead = DeadLetterFile(Path(tmp) / "dead.jsonl")
        source = FileSource(
            "fuzz", path=path, limit=3, on_malformed="dead_letter" if dead_letter else "stop", dead_letters=dead
        )
        reader = _Reader(source, path, None)
        try:
            for _ in range(100):
                batch = reader.next_batch()
                for change in batch.changes:
                    assert_holdable_change(change)
                if batch.error is not None:
                    assert not dead_letter and isinstance(batch.error, CaptureError)
                    break
                if batch.at_end:
                    break
            else:
                raise AssertionError("the reader did not reach the end")
        finally:
            reader.close()
        if dead.path.exists():
            for line in dead.path.read_bytes().splitlines():
                entry = orjson.loads(line)
                assert entry["reason"] and entry["stage"] == "translate"


# -- the dead-letter file: whatever a rejected record holds -----------------------------------------------


@settings(FUZZ, max_examples=max(30, EXAMPLES // 4))
@given(st.lists(json_like, min_size=1, max_size=8), hostile_text)
def test_dead_letters_are_written_whatever_the_record_holds(records: list[Any], reason: str) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-dead-") as tmp:
        dead = DeadLetterFile(Path(tmp) / "dead.jsonl")
        entries = [{"record": record, "position": None} for record in records]
        dead.write(stage="translate", source="s", reason=show(reason), entries=entries)  # one fsync
        lines = dead.path.read_bytes().splitlines()
        assert len(lines) == len(records) and all(json.loads(line)["stage"] == "translate" for line in lines)


def test_dead_letters_of_deep_records_are_written() -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-dead-") as tmp:
        dead = DeadLetterFile(Path(tmp) / "dead.jsonl")
        dead.write(stage="translate", source="s", reason="r", entries=[{"record": deep(5000, 10**5000)}])
        assert json.loads(dead.path.read_bytes())["record"].startswith("[[")
