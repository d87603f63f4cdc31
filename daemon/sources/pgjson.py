"""PG_JSON stream records -> `GraphChange`.

Neptune's property-graph change log (GetPropertygraphStream, and captures of it) serialises each operation as
`{"commitTimestamp", "eventId": {"commitNum", "opNum"}, "data": {"id", "type", "key", "value": {"value",
"dataType"}, "from", "to"}, "op": "ADD" | "REMOVE", "isLastOp"}`. boto3 renames `commitTimestamp` to
`commitTimestampInMillis`; both spellings are accepted. A record that does not fit raises `MalformedRecord`,
which the source sends to the dead-letter file with its position (when it has one).

Every field is checked, whatever the JSON holds: commitNum and opNum are integers from 0 to 2**63 - 1 (what the
checkpoint store holds), ids are non-empty strings that every target can hold as values (no NUL, no lone
surrogate: `daemon.values.check_text`), labels and keys non-empty names by `daemon.names.check_name` (no lone
surrogate; a NUL is encoded by the FalkorDB name rule), values follow `daemon.values.from_pg_json`. A commit
timestamp that is not such an integer reads as 0 (unknown), as when it is absent. No other exception leaves
`translate_record`.
"""

from __future__ import annotations

from typing import Any

from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY, GraphChange, Position, make_change
from daemon.names import InvalidName, check_name
from daemon.values import INT64_MAX, UnsupportedValue, check_text, from_pg_json, show


class MalformedRecord(ValueError):
    """A stream record the daemon cannot translate; `position` is where it sits when known."""

    def __init__(self, reason: str, position: Position | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def record_position(record: dict[str, Any]) -> Position:
    """The (commitNum, opNum) of a record, or MalformedRecord."""
    if not isinstance(record, dict):
        raise MalformedRecord(f"a record is a JSON object, got {type(record).__name__}")
    event = record.get("eventId")
    if not isinstance(event, dict):
        raise MalformedRecord("record has no eventId object")
    commit, op = event.get("commitNum"), event.get("opNum")
    if commit.__class__ is not int or op.__class__ is not int:
        raise MalformedRecord(f"eventId must hold integer commitNum and opNum, got {show(event)}")
    if not (0 <= commit <= INT64_MAX and 0 <= op <= INT64_MAX):
        raise MalformedRecord(f"eventId commitNum and opNum must be from 0 to 2**63 - 1, got {show(event)}")
    return (commit, op)


def translate_record(record: dict[str, Any], partition: str = "") -> GraphChange:
    """Translate one PG_JSON stream record into a GraphChange."""
    # Fast path for well-formed records (nearly all of them): the checks of `_translate`, inline, in the order
    # of the common case. Anything unexpected goes the careful way, which names what is wrong.
    try:
        event = record["eventId"]
        commit, op_num = event["commitNum"], event["opNum"]
        data = record["data"]
        kind = data["type"]
        element_id = data["id"]
        value_obj = data["value"]
        raw = value_obj["value"]
        op = record["op"]
    except (KeyError, TypeError):
        pass
    else:
        # Ids and values that are ASCII without NUL, names that are ASCII, are what every target holds; anything
        # else is checked the careful way.
        # `(a | b) >> 63 == 0`: both are from 0 to 2**63 - 1, in three cheap operations.
        if (
            commit.__class__ is int
            and op_num.__class__ is int
            and not (commit | op_num) >> 63
            and element_id.__class__ is str
            and element_id
            and element_id.isascii()
            and "\x00" not in element_id
            and value_obj.__class__ is dict
            and data.__class__ is dict
            and (op == "ADD" or op == "REMOVE")
        ):
            commit_ms = (
                record["commitTimestamp"] if "commitTimestamp" in record else record.get("commitTimestampInMillis", 0)
            )
            if commit_ms.__class__ is not int or commit_ms >> 63:
                commit_ms = 0
            if kind == VERTEX_PROPERTY or kind == EDGE_PROPERTY:
                key = data.get("key")
                data_type = value_obj.get("dataType", "String")
                if key.__class__ is str and key and key.isascii():
                    if data_type == "String" and raw.__class__ is str and raw.isascii() and "\x00" not in raw:
                        value = raw
                    elif data_type.__class__ is str:  # String too: text that is not plain ASCII is checked there
                        try:
                            value = from_pg_json(data_type, raw)
                        except UnsupportedValue as exc:
                            raise MalformedRecord(str(exc), (commit, op_num)) from exc
                    else:
                        return _careful(record, partition)
                    return make_change(
                        kind, op == "ADD", element_id, key, value, None, None, (commit, op_num), commit_ms, partition
                    )
            elif kind == VERTEX_LABEL and raw.__class__ is str and raw and raw.isascii():
                return make_change(
                    VERTEX_LABEL, op == "ADD", element_id, raw, None, None, None, (commit, op_num), commit_ms, partition
                )
            elif kind == EDGE and raw.__class__ is str and raw and raw.isascii():
                source, target = data.get("from"), data.get("to")
                if (
                    source.__class__ is str
                    and target.__class__ is str
                    and source
                    and target
                    and (source + target).isascii()
                    and "\x00" not in source
                    and "\x00" not in target
                ):
                    return make_change(
                        EDGE, op == "ADD", element_id, raw, None, source, target, (commit, op_num), commit_ms, partition
                    )
    return _careful(record, partition)


def _careful(record: dict[str, Any], partition: str) -> GraphChange:
    """`translate_record` with every check spelled out, raising `MalformedRecord` with the reason."""
    position = record_position(record)
    try:
        return _translate(record, position, partition)
    except MalformedRecord as exc:
        exc.position = position
        raise
    except UnsupportedValue as exc:
        raise MalformedRecord(str(exc), position) from exc


def _text(value: Any, what: str) -> str:
    """A non-empty id string every target can hold, or MalformedRecord naming `what`."""
    if value.__class__ is not str or not value:
        raise MalformedRecord(f"{what} must be a non-empty string, got {show(value)}")
    return check_text(value, what)


def _name(value: Any, what: str) -> str:
    """A label or key every target can hold (`daemon.names.check_name`), or MalformedRecord naming `what`."""
    if value.__class__ is not str or not value:
        raise MalformedRecord(f"{what} must be a non-empty string, got {show(value)}")
    try:
        return check_name(value, what)
    except InvalidName as exc:
        raise MalformedRecord(str(exc)) from None


def _translate(record: dict[str, Any], position: Position, partition: str) -> GraphChange:
    op = record.get("op")
    if op.__class__ is not str or op not in ("ADD", "REMOVE"):
        raise MalformedRecord(f"op must be ADD or REMOVE, got {show(op)}")
    data = record.get("data")
    if not isinstance(data, dict):
        raise MalformedRecord("record has no data object")
    kind = data.get("type")
    if kind not in _KINDS:
        raise MalformedRecord(f"unknown record type {show(kind)} (expected vl, vp, e or ep)")
    element_id = _text(data.get("id"), "data.id")
    value_obj = data.get("value")
    if not isinstance(value_obj, dict) or "value" not in value_obj:
        raise MalformedRecord("data.value must be an object with a value field")
    raw = value_obj["value"]
    data_type = value_obj.get("dataType", "String")
    commit_ms = record.get("commitTimestamp", record.get("commitTimestampInMillis", 0))
    if commit_ms.__class__ is not int or not 0 <= commit_ms <= INT64_MAX:
        commit_ms = 0
    add = op == "ADD"

    if kind == VERTEX_LABEL or kind == EDGE:
        label = _name(raw, "label" if kind == VERTEX_LABEL else "edge type")
        if kind == VERTEX_LABEL:
            return GraphChange(VERTEX_LABEL, add, element_id, label, None, None, None, position, commit_ms, partition)
        source, target = data.get("from"), data.get("to")
        if source.__class__ is not str or target.__class__ is not str or not source or not target:
            raise MalformedRecord("e record needs string from and to vertex ids")
        source, target = _text(source, "data.from"), _text(target, "data.to")
        return GraphChange(EDGE, add, element_id, label, None, source, target, position, commit_ms, partition)
    key = _name(data.get("key"), f"{kind} record's property key")
    if data_type.__class__ is not str:
        raise MalformedRecord(f"dataType must be a string, got {show(data_type)}")
    value = from_pg_json(data_type, raw)
    return GraphChange(kind, add, element_id, key, value, None, None, position, commit_ms, partition)


_KINDS = (VERTEX_LABEL, VERTEX_PROPERTY, EDGE, EDGE_PROPERTY)
