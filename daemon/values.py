"""Property values: from a source's typed representation to what every target can hold.

The documented rule (docs/data-model.md):

| PG_JSON `dataType`                     | replicated as                                   |
|----------------------------------------|-------------------------------------------------|
| String                                 | string                                          |
| Bool, Boolean                          | boolean                                         |
| Byte, Short, Int, Integer, Long        | integer (64-bit)                                |
| Float, Double                          | float; NaN / +-Infinity as the strings "NaN", "Infinity", "-Infinity" |
| Date, DateTime                         | ISO-8601 string (epoch milliseconds become UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`) |

Non-finite floats become strings because neither a JSON parameter (Neptune) nor FalkorDB's parameter syntax can
carry them.

DynamoDB attribute values (`from_dynamodb`), one rule for every target:

| DynamoDB type | replicated as |
|---------------|---------------|
| S             | string |
| N             | integer if whole and within 64 bits; else float if the float prints back as the same |
|               | decimal; else the decimal as a string (no precision is lost) |
| BOOL          | boolean |
| B             | base64 string |
| NULL          | no property (the key is absent) |
| SS, NS, BS    | JSON text of the sorted members (numbers by the N rule, binary as base64) |
| L, M          | JSON text (map keys sorted; NULL inside becomes null) |

Sets, lists and maps become JSON text because Neptune's openCypher holds no list or map property values.
"""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson


class UnsupportedValue(ValueError):
    """A value or data type the daemon cannot replicate faithfully; the change is dead-lettered."""


_INT_TYPES = frozenset({"Byte", "Short", "Int", "Integer", "Long"})
_FLOAT_TYPES = frozenset({"Float", "Double"})
_BOOL_TYPES = frozenset({"Bool", "Boolean"})
_DATE_TYPES = frozenset({"Date", "DateTime"})
_NON_FINITE = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "INF": "Infinity",
    "-INF": "-Infinity",
}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def encode_float(value: float) -> float | str:
    """A float as every target can hold it."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def from_pg_json(data_type: str, raw: Any) -> Any:
    """Convert one PG_JSON `value` object (`{"value": raw, "dataType": data_type}`) by the rule above."""
    if data_type == "String":
        if not isinstance(raw, str):
            raise UnsupportedValue(f"String value is {type(raw).__name__}")
        return raw
    if data_type in _INT_TYPES:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise UnsupportedValue(f"{data_type} value is {type(raw).__name__}")
        try:
            value = int(raw)
        except ValueError as exc:
            raise UnsupportedValue(f"{data_type} value {raw!r} is not an integer") from exc
        if not INT64_MIN <= value <= INT64_MAX:
            raise UnsupportedValue(f"{data_type} value {raw!r} does not fit in 64 bits")
        return value
    if data_type in _FLOAT_TYPES:
        if isinstance(raw, str):
            if raw in _NON_FINITE:
                return _NON_FINITE[raw]
            try:
                return encode_float(float(raw))
            except ValueError as exc:
                raise UnsupportedValue(f"{data_type} value {raw!r} is not a number") from exc
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise UnsupportedValue(f"{data_type} value is {type(raw).__name__}")
        return encode_float(float(raw))
    if data_type in _BOOL_TYPES:
        if isinstance(raw, bool):
            return raw
        if raw in ("true", "false"):
            return raw == "true"
        raise UnsupportedValue(f"{data_type} value {raw!r} is not a boolean")
    if data_type in _DATE_TYPES:
        if isinstance(raw, str):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            stamp = datetime.fromtimestamp(raw / 1000, tz=UTC)
            return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{raw % 1000:03d}Z"
        raise UnsupportedValue(f"{data_type} value is {type(raw).__name__}")
    raise UnsupportedValue(f"unsupported dataType {data_type!r}")


ABSENT: Any = object()  # `from_dynamodb` of NULL: the property is not set


def dynamodb_number(text: str) -> int | float | str:
    """A DynamoDB N value by the rule above."""
    # Fast path: plain ASCII decimal integers of at most 18 digits (always within 64 bits) are what most N
    # values are; `int` gives what the Decimal route gives for them.
    digits = text[1:] if text[:1] == "-" else text
    if 0 < len(digits) <= 18 and digits.isdigit() and digits.isascii():
        return int(text)
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise UnsupportedValue(f"N value {text!r} is not a number") from exc
    if not number.is_finite():
        raise UnsupportedValue(f"N value {text!r} is not a finite number")
    if number == number.to_integral_value() and INT64_MIN <= number <= INT64_MAX:
        return int(number)
    as_float = float(number)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == number:
        return as_float
    return text.strip()


def _b64(raw: Any) -> str:
    if isinstance(raw, str):  # the wire form; botocore hands bytes
        return raw
    return base64.b64encode(bytes(raw)).decode("ascii")


def _nested(value: dict[str, Any]) -> Any:
    """A DynamoDB value inside a set, list or map, as plain JSON data."""
    ((tag, raw),) = value.items()
    if tag == "S" or tag == "BOOL":
        return raw
    if tag == "N":
        return dynamodb_number(raw)
    if tag == "B":
        return _b64(raw)
    if tag == "NULL":
        return None
    if tag == "SS":
        return sorted(raw)
    if tag == "NS":
        return [dynamodb_number(n) for n in sorted(raw, key=Decimal)]
    if tag == "BS":
        return sorted(_b64(b) for b in raw)
    if tag == "L":
        return [_nested(v) for v in raw]
    if tag == "M":
        return {k: _nested(v) for k, v in raw.items()}
    raise UnsupportedValue(f"unknown DynamoDB type {tag!r}")


def from_dynamodb(value: dict[str, Any]) -> Any:
    """One DynamoDB attribute value (`{"S": "x"}`, as botocore returns it) by the rule above; `ABSENT` for NULL."""
    if len(value) != 1:
        raise UnsupportedValue(f"an attribute value has exactly one type tag, got {sorted(value)}")
    ((tag, raw),) = value.items()
    if tag == "S" or tag == "BOOL":
        return raw
    if tag == "N":
        return dynamodb_number(raw)
    if tag == "NULL":
        return ABSENT
    if tag in _DOCUMENT_TAGS:
        return orjson.dumps(_nested(value), option=orjson.OPT_SORT_KEYS).decode()
    return _nested(value)


_DOCUMENT_TAGS = frozenset({"SS", "NS", "BS", "L", "M"})
