"""The test stand's reader of the Neptune bulk loader's openCypher CSV format (independent of the daemon's writer).

Follows the Neptune user guide ("Load format for openCypher data"): RFC 4180 CSV in UTF-8 with one header row.

* System columns: node files `:ID` (optionally `:ID(space)`, or `name:ID` to keep the id as a property too) and
  `:LABEL` (labels separated by `;`); relationship files `:ID`, `:START_ID`, `:END_ID`, `:TYPE`.
* Property columns `name:Type` or `name:Type[]`; a name without a type is a `String`; type names are
  case-insensitive; a `:` inside a name is written `\\:`. Header names cannot hold spaces, commas or line breaks.
* Types: `Bool`/`Boolean` (`true` / `false`, any case), `Byte`, `Short`, `Int`, `Long` (range-checked),
  `Float`, `Double` (`NaN`, `Infinity`, `-Infinity` allowed, `INF` not), `String`, `DateTime` (`yyyy-MM-dd`,
  `yyyy-MM-ddTHH:mm`, `yyyy-MM-ddTHH:mm:ss`, optionally with `Z` or fractional seconds; kept as text).
* Arrays: values separated by `;`, a `;` inside a value written `\\;`; arrays are refused on relationships.
* An empty cell is "no value".

The reader is stricter than it strictly needs to be (a `Bool` cell other than true/false is an error rather than
false) so that a writer bug shows up as an error line instead of a silently different value.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

NODE_FILE, RELATIONSHIP_FILE = "nodes", "relationships"
_INT_RANGES = {
    "byte": (-(2**7), 2**7 - 1),
    "short": (-(2**15), 2**15 - 1),
    "int": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
}
_FLOAT_SPECIAL = {"NaN": float("nan"), "Infinity": float("inf"), "+Infinity": float("inf"), "-Infinity": float("-inf")}
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?")
_TYPES = frozenset({"bool", "boolean", "byte", "short", "int", "long", "float", "double", "string", "datetime"})
_SYSTEM = re.compile(r"(?P<name>[^:]*):(?P<kind>ID|LABEL|START_ID|END_ID|TYPE)(\((?P<space>[^()]*)\))?")


class CsvFormatError(ValueError):
    """The file as a whole cannot be read (bad header, not UTF-8, broken quoting)."""


@dataclass(slots=True)
class Column:
    name: str  # property name, or the system column (":ID", ":LABEL", ...)
    type: str  # lower-case type name; "" for system columns
    array: bool = False
    system: bool = False
    id_property: str | None = None  # `name:ID`: also store the id as this property


@dataclass(slots=True)
class Row:
    record: int  # 1-based number of the data record in the file
    id: str | None
    labels: list[str] = field(default_factory=list)
    start: str | None = None
    end: str | None = None
    type: str | None = None
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RecordError:
    record: int
    code: str  # PARSING_ERROR | DATATYPE_MISMATCH
    message: str


@dataclass(slots=True)
class ParsedFile:
    kind: str
    columns: list[Column]
    rows: list[Row]
    errors: list[RecordError]


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split on `separator` not preceded by a backslash; `\\<separator>` becomes the separator itself."""
    parts, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] == separator:
            current.append(separator)
            i += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def parse_header(fields: list[str]) -> tuple[str, list[Column]]:
    columns: list[Column] = []
    seen: set[str] = set()
    for raw in fields:
        system = _SYSTEM.fullmatch(raw)
        if system and (system["name"] == "" or system["kind"] == "ID"):
            kind = ":" + system["kind"]
            if kind in seen:
                raise CsvFormatError(f"system column {kind} appears twice")
            seen.add(kind)
            columns.append(Column(kind, "", system=True, id_property=system["name"] or None))
            continue
        if any(c in raw for c in " ,\r\n"):
            raise CsvFormatError(f"column header {raw!r} holds a space, comma or line break")
        parts = _split_unescaped(raw, ":")
        if len(parts) == 1:
            name, type_text = parts[0], "String"
        else:
            name, type_text = ":".join(parts[:-1]), parts[-1]
        array = type_text.endswith("[]")
        type_name = type_text[:-2].lower() if array else type_text.lower()
        if type_name not in _TYPES:
            raise CsvFormatError(f"column {raw!r}: unknown type {type_text!r}")
        if not name:
            raise CsvFormatError(f"column {raw!r} has no property name")
        if name in seen:
            raise CsvFormatError(f"property column {name!r} appears twice")
        seen.add(name)
        columns.append(Column(name, type_name, array=array))
    if ":ID" not in seen:
        raise CsvFormatError("no :ID column")
    relationship = {":START_ID", ":END_ID", ":TYPE"} & seen
    if relationship:
        if relationship != {":START_ID", ":END_ID", ":TYPE"}:
            raise CsvFormatError("a relationship file needs :START_ID, :END_ID and :TYPE")
        if ":LABEL" in seen:
            raise CsvFormatError("a relationship file cannot have :LABEL")
        if any(c.array for c in columns):
            raise CsvFormatError("relationship properties cannot be arrays")
        return RELATIONSHIP_FILE, columns
    return NODE_FILE, columns


def parse_scalar(text: str, type_name: str) -> Any:
    """One cell of a typed column; ValueError with a reason when it does not parse."""
    if type_name in ("bool", "boolean"):
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"{text!r} is not a Bool")
        return lowered == "true"
    if type_name in _INT_RANGES:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"{text!r} is not an integer")
        value = int(text)
        lo, hi = _INT_RANGES[type_name]
        if not lo <= value <= hi:
            raise ValueError(f"{text} is out of range for {type_name}")
        return value
    if type_name in ("float", "double"):
        if text in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[text]
        if not _FLOAT_TEXT.fullmatch(text):
            raise ValueError(f"{text!r} is not a {type_name}")
        return float(text)
    if type_name == "datetime":
        if not _DATETIME.fullmatch(text):
            raise ValueError(f"{text!r} is not a DateTime")
        return text
    return text


def parse_opencypher_csv(data: bytes | str) -> ParsedFile:
    """Parse one file; per-record problems are collected in `errors` (those records are left out)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CsvFormatError(f"not UTF-8: {exc}") from None
    if data.startswith("\ufeff"):
        data = data[1:]
    reader = csv.reader(io.StringIO(data, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise CsvFormatError("empty file (no header row)") from None
    except csv.Error as exc:
        raise CsvFormatError(f"header: {exc}") from None
    kind, columns = parse_header(header)
    rows: list[Row] = []
    errors: list[RecordError] = []
    record = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RecordError(record + 1, "PARSING_ERROR", str(exc)))
            break
        record += 1
        if not fields:
            continue  # a blank line
        if len(fields) != len(columns):
            errors.append(
                RecordError(record, "PARSING_ERROR", f"{len(fields)} fields where the header has {len(columns)}")
            )
            continue
        row = Row(record, None)
        problem = _fill(row, columns, fields)
        if problem is not None:
            errors.append(RecordError(record, *problem))
        else:
            rows.append(row)
    return ParsedFile(kind, columns, rows, errors)


def _fill(row: Row, columns: list[Column], fields: list[str]) -> tuple[str, str] | None:
    for column, text in zip(columns, fields, strict=True):
        if column.system:
            if column.name == ":LABEL":
                row.labels = [label for label in text.split(";") if label] if text else []
            elif not text:
                return "PARSING_ERROR", f"empty {column.name}"
            elif column.name == ":ID":
                row.id = text
                if column.id_property:
                    row.props[column.id_property] = text
            elif column.name == ":START_ID":
                row.start = text
            elif column.name == ":END_ID":
                row.end = text
            else:
                row.type = text
            continue
        if text == "":
            continue
        try:
            if column.array:
                row.props[column.name] = [parse_scalar(part, column.type) for part in _split_unescaped(text, ";")]
            else:
                row.props[column.name] = parse_scalar(text, column.type)
        except ValueError as exc:
            return "DATATYPE_MISMATCH", f"column {column.name}: {exc}"
    return None
