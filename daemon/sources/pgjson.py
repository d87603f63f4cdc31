"""PG_JSON stream records -> `GraphChange`.

Neptune's property-graph change log (GetPropertygraphStream, and captures of it) serialises each operation as
`{"commitTimestamp", "eventId": {"commitNum", "opNum"}, "data": {"id", "type", "key", "value": {"value",
"dataType"}, "from", "to"}, "op": "ADD" | "REMOVE", "isLastOp"}`. boto3 renames `commitTimestamp` to
`commitTimestampInMillis`; both spellings are accepted. A record that does not fit raises `MalformedRecord`,
which the source sends to the dead-letter file with its position.
"""

from __future__ import annotations

from typing import Any

from daemon.model import EDGE, EDGE_PROPERTY, VERTEX_LABEL, VERTEX_PROPERTY, GraphChange, Position
from daemon.values import UnsupportedValue, from_pg_json


class MalformedRecord(ValueError):
    """A stream record the daemon cannot translate; `position` is where it sits when known."""

    def __init__(self, reason: str, position: Position | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def record_position(record: dict[str, Any]) -> Position:
    """The (commitNum, opNum) of a record, or MalformedRecord."""
    event = record.get("eventId")
    if not isinstance(event, dict):
        raise MalformedRecord("record has no eventId object")
    commit, op = event.get("commitNum"), event.get("opNum")
    if not isinstance(commit, int) or not isinstance(op, int) or isinstance(commit, bool):
        raise MalformedRecord(f"eventId must hold integer commitNum and opNum, got {event!r}")
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
        if (
            commit.__class__ is int
            and op_num.__class__ is int
            and element_id.__class__ is str
            and element_id
            and value_obj.__class__ is dict
            and data.__class__ is dict
            and (op == "ADD" or op == "REMOVE")
        ):
            commit_ms = (
                record["commitTimestamp"] if "commitTimestamp" in record else record.get("commitTimestampInMillis", 0)
            )
            if not isinstance(commit_ms, int):
                commit_ms = 0
            if kind == VERTEX_PROPERTY or kind == EDGE_PROPERTY:
                key = data.get("key")
                data_type = value_obj.get("dataType", "String")
                if key.__class__ is str and key:
                    if data_type == "String" and raw.__class__ is str:
                        value = raw
                    elif data_type.__class__ is str:
                        try:
                            value = from_pg_json(data_type, raw)
                        except UnsupportedValue as exc:
                            raise MalformedRecord(str(exc), (commit, op_num)) from exc
                    else:
                        return _careful(record, partition)
                    return GraphChange(
                        kind, op == "ADD", element_id, key, value, None, None, (commit, op_num), commit_ms, partition
                    )
            elif kind == VERTEX_LABEL and raw.__class__ is str and raw:
                return GraphChange(
                    VERTEX_LABEL, op == "ADD", element_id, raw, None, None, None, (commit, op_num), commit_ms, partition
                )
            elif kind == EDGE and raw.__class__ is str and raw:
                source, target = data.get("from"), data.get("to")
                if source.__class__ is str and target.__class__ is str and source and target:
                    return GraphChange(
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


def _translate(record: dict[str, Any], position: Position, partition: str) -> GraphChange:
    op = record.get("op")
    if op not in ("ADD", "REMOVE"):
        raise MalformedRecord(f"op must be ADD or REMOVE, got {op!r}")
    data = record.get("data")
    if not isinstance(data, dict):
        raise MalformedRecord("record has no data object")
    kind = data.get("type")
    element_id = data.get("id")
    if not isinstance(element_id, str) or not element_id:
        raise MalformedRecord(f"data.id must be a non-empty string, got {element_id!r}")
    value_obj = data.get("value")
    if not isinstance(value_obj, dict) or "value" not in value_obj:
        raise MalformedRecord("data.value must be an object with a value field")
    raw = value_obj["value"]
    data_type = value_obj.get("dataType", "String")
    commit_ms = record.get("commitTimestamp", record.get("commitTimestampInMillis", 0))
    if not isinstance(commit_ms, int):
        commit_ms = 0
    add = op == "ADD"

    if kind == VERTEX_LABEL or kind == EDGE:
        if not isinstance(raw, str) or not raw:
            raise MalformedRecord(f"{kind} record needs a non-empty label string, got {raw!r}")
        if kind == VERTEX_LABEL:
            return GraphChange(VERTEX_LABEL, add, element_id, raw, None, None, None, position, commit_ms, partition)
        source, target = data.get("from"), data.get("to")
        if not isinstance(source, str) or not isinstance(target, str) or not source or not target:
            raise MalformedRecord("e record needs string from and to vertex ids")
        return GraphChange(EDGE, add, element_id, raw, None, source, target, position, commit_ms, partition)
    if kind == VERTEX_PROPERTY or kind == EDGE_PROPERTY:
        key = data.get("key")
        if not isinstance(key, str) or not key:
            raise MalformedRecord(f"{kind} record needs a non-empty property key, got {key!r}")
        if not isinstance(data_type, str):
            raise MalformedRecord(f"dataType must be a string, got {data_type!r}")
        value = from_pg_json(data_type, raw)
        return GraphChange(kind, add, element_id, key, value, None, None, position, commit_ms, partition)
    raise MalformedRecord(f"unknown record type {kind!r} (expected vl, vp, e or ep)")
