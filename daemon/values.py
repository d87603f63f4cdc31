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

Values no target can hold are refused with `UnsupportedValue` (the change is dead-lettered with the reason), never
converted lossily or left to fail later: an integer outside 64 bits, a number beyond the 64-bit float range
(`Double` `1e400`, an integer JSON number too big for a float), an epoch-millisecond `Date` outside the years
1-9999, a JSON type the data type does not take (a Long given as a float, a list, an object), and strings that
are not text every target holds (`check_text`): a NUL character (FalkorDB's client splices parameters into the
query text, which the engine reads up to the first NUL) or a lone surrogate (not Unicode: no UTF-8 encoder
takes it, neither the FalkorDB client nor a JSON body).

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

Sets, lists and maps become JSON text because Neptune's openCypher holds no list or map property values. A value
that does not fit its type tag (an N that is not DynamoDB's number syntax, an S or SS member that is not a
string, a B that is neither bytes nor base64 text, an M key that is not a string) or that nests deeper than
`MAX_DEPTH` lists and maps (DynamoDB's own limit is 32) is refused with `UnsupportedValue`. Strings follow the
text rule above, except inside JSON text, where a NUL is written as the escape `\\u0000`.
"""

from __future__ import annotations

import base64
import math
import re
import reprlib
from datetime import datetime, timedelta
from decimal import Decimal
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
MAX_DEPTH = 32  # lists and maps inside one DynamoDB value (DynamoDB's own limit)
_EPOCH = datetime(1970, 1, 1)
_DATE_MIN_MS = (datetime(1, 1, 1) - _EPOCH) // timedelta(milliseconds=1)
_DATE_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000) - _EPOCH) // timedelta(milliseconds=1)
# DynamoDB's number syntax, ASCII only (`Decimal` would also take "1_000", "٣" and "Infinity")
_DYNAMODB_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*", re.ASCII)
_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)  # int() also reads "1_000" and non-ASCII digits
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}", re.ASCII)
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlevel = 2
_SHOW.maxdict = _SHOW.maxlist = 3


def show(raw: Any) -> str:
    """A bounded repr of a rejected value for a reason text (a value may be megabytes, or nested 10,000 deep)."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 128:
        return f"<an integer of {raw.bit_length()} bits>"
    try:
        text = _SHOW.repr(raw)
    except Exception:  # an object whose repr fails
        return f"<a {type(raw).__name__}>"
    return text if len(text) <= 120 else text[:100] + f"... ({type(raw).__name__})"


def check_text(text: str, what: str) -> str:
    """`text` if every target can hold it (no NUL, no lone surrogate); else `UnsupportedValue` naming `what`."""
    if "\x00" in text:
        raise UnsupportedValue(f"{what} {show(text)} contains a NUL character, which FalkorDB cannot hold")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UnsupportedValue(
                f"{what} {show(text)} is not valid Unicode (lone surrogate U+{ord(text[exc.start]):04X} at index "
                f"{exc.start})"
            ) from None
    return text


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
        if raw.__class__ is not str:
            raise UnsupportedValue(f"String value is {type(raw).__name__}")
        return check_text(raw, "String value")
    if not isinstance(data_type, str):
        raise UnsupportedValue(f"dataType must be a string, got {show(data_type)}")
    if data_type in _INT_TYPES:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise UnsupportedValue(f"{data_type} value is {type(raw).__name__}")
        if raw.__class__ is str:
            if not _INT_TEXT.fullmatch(raw):
                raise UnsupportedValue(f"{data_type} value {show(raw)} is not an integer")
            if len(raw) > 100:  # int() of thousands of digits is slow, then refused by Python's digit limit
                raise UnsupportedValue(f"{data_type} value {show(raw)} does not fit in 64 bits")
        value = int(raw)
        if not INT64_MIN <= value <= INT64_MAX:
            raise UnsupportedValue(f"{data_type} value {show(raw)} does not fit in 64 bits")
        return value
    if data_type in _FLOAT_TYPES:
        if isinstance(raw, str):
            if raw in _NON_FINITE:
                return _NON_FINITE[raw]
            try:
                if not raw.isascii() or "_" in raw:  # float() also reads "1_0" and non-ASCII digits
                    raise ValueError(raw)
                value = float(raw)
            except ValueError as exc:
                raise UnsupportedValue(f"{data_type} value {show(raw)} is not a number") from exc
            if math.isinf(value) and "inf" not in raw.lower():  # finite text beyond the float range: "1e400"
                raise UnsupportedValue(f"{data_type} value {show(raw)} is beyond the 64-bit float range")
            return encode_float(value)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise UnsupportedValue(f"{data_type} value is {type(raw).__name__}")
        try:
            return encode_float(float(raw))
        except OverflowError:
            raise UnsupportedValue(f"{data_type} value {show(raw)} is beyond the 64-bit float range") from None
    if data_type in _BOOL_TYPES:
        if isinstance(raw, bool):
            return raw
        if raw == "true" or raw == "false":
            return raw == "true"
        raise UnsupportedValue(f"{data_type} value {show(raw)} is not a boolean")
    if data_type in _DATE_TYPES:
        if isinstance(raw, str):
            return check_text(raw, f"{data_type} value")
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not _DATE_MIN_MS <= raw <= _DATE_MAX_MS:
                raise UnsupportedValue(
                    f"{data_type} value {show(raw)} (epoch milliseconds) is outside the years 1 to 9999"
                )
            return (_EPOCH + timedelta(milliseconds=raw)).isoformat(timespec="milliseconds") + "Z"
        raise UnsupportedValue(f"{data_type} value is {type(raw).__name__}")
    raise UnsupportedValue(f"unsupported dataType {show(data_type)}")


ABSENT: Any = object()  # `from_dynamodb` of NULL: the property is not set


def dynamodb_number(text: str) -> int | float | str:
    """A DynamoDB N value by the rule above."""
    # Fast path: plain ASCII decimal integers of at most 18 digits (always within 64 bits) are what most N
    # values are; `int` gives what the Decimal route gives for them.
    if text.__class__ is not str:
        raise UnsupportedValue(f"N value is {type(text).__name__}, not a string")
    digits = text[1:] if text[:1] == "-" else text
    if 0 < len(digits) <= 18 and digits.isdigit() and digits.isascii():
        return int(text)
    # Second fast path: a plain decimal fraction of at most 15 digits with a non-zero fractional part. With 15
    # significant digits or fewer a double reads back as the same decimal (DBL_DIG), so `float` gives what the
    # Decimal route below gives for it; so does `int` for 19 digits within 64 bits.
    whole, dot, fraction = digits.partition(".")
    if dot:
        if (
            whole
            and len(whole) + len(fraction) <= 15
            and whole.isdigit()
            and fraction.isdigit()
            and digits.isascii()
            and fraction.strip("0")
        ):
            return float(text)
    elif len(digits) == 19 and digits.isdigit() and digits.isascii():
        number = int(text)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    if not _DYNAMODB_NUMBER.fullmatch(text):
        raise UnsupportedValue(f"N value {show(text)} is not a number")
    number = Decimal(text)
    # Whole and within 64 bits. The exponent test comes first: `to_integral_value` of "1e-999999999" or
    # "1e999999999" would build a billion digits.
    if number.adjusted() < 19 and number == number.to_integral_value() and INT64_MIN <= number <= INT64_MAX:
        return int(number)
    as_float = float(number)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == number:
        return as_float
    return text.strip()


def _b64(raw: Any) -> str:
    if raw.__class__ is str:  # the wire form (the daemon's model extras keep it); botocore's own model hands bytes
        if len(raw) % 4 or not _BASE64.fullmatch(raw):
            raise UnsupportedValue(f"B value {show(raw)} is not base64 text")
        return raw
    if isinstance(raw, bytes | bytearray | memoryview):
        return base64.b64encode(raw).decode("ascii")
    raise UnsupportedValue(f"B value is {type(raw).__name__}, not bytes or base64 text")


def _members(tag: str, raw: Any, kind: type | tuple[type, ...]) -> list[Any]:
    if not isinstance(raw, list | tuple):
        raise UnsupportedValue(f"{tag} value is {type(raw).__name__}, not a list")
    if kind is not object:  # (every member is an object: a list's members are checked one by one by `_nested`)
        for member in raw:
            if not isinstance(member, kind):
                raise UnsupportedValue(f"{tag} member {show(member)} is {type(member).__name__}")
    return list(raw)


def _nested(value: Any, depth: int) -> Any:
    """A DynamoDB value inside a set, list or map, as plain JSON data."""
    if not isinstance(value, dict) or len(value) != 1:
        raise UnsupportedValue(f"an attribute value is an object with exactly one type tag, got {show(value)}")
    ((tag, raw),) = value.items()
    if tag == "S":
        if raw.__class__ is not str:
            raise UnsupportedValue(f"S value is {type(raw).__name__}")
        return raw
    if tag == "BOOL":
        if raw.__class__ is not bool:
            raise UnsupportedValue(f"BOOL value is {type(raw).__name__}")
        return raw
    if tag == "N":
        return dynamodb_number(raw)
    if tag == "B":
        return _b64(raw)
    if tag == "NULL":
        return None
    if tag == "SS":
        return sorted(_members(tag, raw, str))
    if tag == "NS":
        numbers = [(dynamodb_number(n), n) for n in _members(tag, raw, str)]
        if all(n.__class__ is int for n, _ in numbers):  # integers order by value as their decimals do
            return sorted(n for n, _ in numbers)
        return [n for n, _ in sorted(numbers, key=lambda pair: Decimal(pair[1]))]
    if tag == "BS":
        return sorted(_b64(b) for b in _members(tag, raw, (str, bytes, bytearray, memoryview)))
    if tag == "L" or tag == "M":
        if depth >= MAX_DEPTH:
            raise UnsupportedValue(f"lists and maps nest deeper than {MAX_DEPTH} levels")
        if tag == "L":
            return [_nested(v, depth + 1) for v in _members(tag, raw, object)]
        if not isinstance(raw, dict):
            raise UnsupportedValue(f"M value is {type(raw).__name__}, not a map")
        out = {}
        for k, v in raw.items():
            if k.__class__ is not str:
                raise UnsupportedValue(f"M key {show(k)} is {type(k).__name__}, not a string")
            out[k] = _nested(v, depth + 1)
        return out
    raise UnsupportedValue(f"unknown DynamoDB type {show(tag)}")


def from_dynamodb(value: dict[str, Any]) -> Any:
    """One DynamoDB attribute value (`{"S": "x"}`, as botocore returns it) by the rule above; `ABSENT` for NULL."""
    if not isinstance(value, dict) or len(value) != 1:
        raise UnsupportedValue(f"an attribute value has exactly one type tag, got {show(value)}")
    ((tag, raw),) = value.items()
    if tag == "S":
        if raw.__class__ is not str:
            raise UnsupportedValue(f"S value is {type(raw).__name__}")
        return check_text(raw, "S value")
    if tag == "N":
        return dynamodb_number(raw)
    if tag == "NULL":
        return ABSENT
    if tag == "B":
        return _b64(raw)
    if tag in _DOCUMENT_TAGS:
        data = _plain_set(tag, raw) if raw.__class__ is list else None
        if data is None:
            data = _nested(value, 0)
        try:
            return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError as exc:  # orjson refuses strings with lone surrogates
            raise UnsupportedValue(f"{tag} value cannot be written as JSON text: {exc}") from None
    return _nested(value, 0)


_DOCUMENT_TAGS = frozenset({"SS", "NS", "BS", "L", "M"})


def _plain_set(tag: str, raw: list[Any]) -> list[Any] | None:
    """What `_nested` makes of the common sets (string members; integer numbers; base64 text), without its
    per-member checks and calls; None for anything else (a list or map, another member type), which `_nested`
    takes with its reasons."""
    for member in raw:
        if member.__class__ is not str:
            return None
    if tag == "SS":
        return sorted(raw)
    if tag == "NS":
        numbers = [dynamodb_number(n) for n in raw]
        for number in numbers:
            if number.__class__ is not int:
                return None
        return sorted(numbers)
    if tag == "BS":
        for member in raw:
            if len(member) % 4 or not _BASE64.fullmatch(member):
                return None
        return sorted(raw)
    return None
