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
carry them. Maps and binary values (from DynamoDB images) are handled by the mapping layer before they get here.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any


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
