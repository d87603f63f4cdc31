"""The Neptune bulk loader's openCypher CSV format: column headers, cell text, and what the format cannot carry.

Room in the design: bootstrap step 3 (snapshot -> openCypher CSV -> S3 -> loader). This module is pure: it knows
the format, not files or S3 (`daemon.bootstrap.csv_files` builds files from snapshot records).

The format (Neptune user guide, "Load format for openCypher data"): RFC 4180 CSV in UTF-8, nodes and
relationships in separate files, one header row per file.

* Node files: `:ID` (required), `:LABEL` (several labels separated by `;`), then property columns.
* Relationship files: `:ID` (required while `userProvidedEdgeIds` is true, the default), `:START_ID`,
  `:END_ID`, `:TYPE` (one type), then property columns.
* A property column is `name:Type` (`Bool`, `Byte`, `Short`, `Int`, `Long`, `Float`, `Double`, `String`,
  `DateTime`; case-insensitive) or `name:Type[]` for an array (values separated by `;`, a `;` inside a string
  escaped as `\\;`; not allowed on relationships). An empty cell means "no value".
* Strings need no quotes unless they hold a comma, a quote or a line break; a quote inside a quoted field is
  doubled (`"say ""hi"" now"`). `Double` / `Float` take `NaN`, `Infinity` and `-Infinity` (not `INF`).
* Header names cannot hold spaces, commas or line breaks.

Values arrive already converted by the project's value rule (`daemon.values`): bool, 64-bit int, finite float
(non-finite ones are already the strings "NaN" / "Infinity" / "-Infinity"), str. They are written as `Bool`,
`Long`, `Double` (Python `repr`, which reads back to the same double) and `String`, so a column's type says
exactly what the target stores.

**What goes through CSV and what does not.** The loader's reading of a few things is not pinned down by its
documentation (an empty quoted string versus an absent value, surrounding white space, backslashes, a `;` in
a label, escaped colons in names), and a bootstrap must not guess. So a value, id, label, type or key is put
in a CSV file only when it is unambiguous (`*_ok` below); everything else is written after the load through the
normal openCypher path, where values travel as parameters (the *residual*, see `daemon.bootstrap.csv_files`).
Lists go there too: the loader stores an array as a set of values (order and duplicates lost).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from daemon.values import INT64_MAX, INT64_MIN

NODE_SYSTEM_COLUMNS = (":ID", ":LABEL")
RELATIONSHIP_SYSTEM_COLUMNS = (":ID", ":START_ID", ":END_ID", ":TYPE")
LABEL_SEPARATOR = ";"
ARRAY_SEPARATOR = ";"

BOOL, LONG, DOUBLE, STRING = "Bool", "Long", "Double", "String"
SCALAR_TYPES = (BOOL, LONG, DOUBLE, STRING)

# Characters a property name may not contain in a header (the format forbids white space and commas; ":" and
# "\\" would need escapes whose reading the Neptune DB docs leave open; '"' would need CSV quoting).
_BAD_KEY_CHARS = frozenset(',:\\"')
_NON_FINITE_TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def string_ok(text: str) -> bool:
    """A string value (or id, type) that a CSV cell carries unambiguously: non-empty, no surrounding white
    space, no backslash, no NUL. Commas, quotes, line breaks and any other unicode are fine (RFC 4180 quoting)."""
    return bool(text) and text == text.strip() and "\\" not in text and "\x00" not in text


def id_ok(element_id: str) -> bool:
    """An element id for `:ID`, `:START_ID` or `:END_ID`."""
    return isinstance(element_id, str) and string_ok(element_id)


def label_ok(label: str) -> bool:
    """A label for `:LABEL`, where `;` separates labels."""
    return string_ok(label) and LABEL_SEPARATOR not in label


def type_ok(edge_type: str) -> bool:
    """A relationship type for `:TYPE`."""
    return string_ok(edge_type)


def key_ok(key: str) -> bool:
    """A property name usable in a column header."""
    return (
        bool(key)
        and not key.startswith(("~", ":"))
        and not any(c.isspace() or c in _BAD_KEY_CHARS or c == "\x00" for c in key)
    )


def scalar_type(value: Any) -> str | None:
    """The column type for a value, or None when CSV cannot carry it unambiguously."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return LONG if INT64_MIN <= value <= INT64_MAX else None
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return STRING if string_ok(value) else None
    return None


def array_type(values: Sequence[Any]) -> str | None:
    """`T[]` for a non-empty list of one scalar type whose cells are unambiguous, else None."""
    if not values:
        return None
    types = {scalar_type(v) for v in values}
    if len(types) != 1 or None in types:
        return None
    (element,) = types
    assert element is not None
    return element + "[]"


def value_type(value: Any, *, arrays: bool = False) -> str | None:
    """The column type for a property value (lists only with `arrays`), or None for the residual."""
    if isinstance(value, list | tuple):
        return array_type(value) if arrays else None
    return scalar_type(value)


def encode_scalar(value: Any, type_name: str) -> str:
    """The cell text of one scalar of `type_name`."""
    if type_name == BOOL:
        return "true" if value else "false"
    if type_name == LONG:
        return str(int(value))
    if type_name == DOUBLE:
        number = float(value)
        if not math.isfinite(number):
            return _NON_FINITE_TEXT[repr(number)]
        return repr(number)
    return str(value)


def encode_cell(value: Any, type_name: str) -> str:
    """The cell text of a property value whose column type is `type_name` (see `value_type`)."""
    if type_name.endswith("[]"):
        element = type_name[:-2]
        return ARRAY_SEPARATOR.join(
            encode_scalar(v, element).replace(ARRAY_SEPARATOR, "\\" + ARRAY_SEPARATOR) for v in value
        )
    return encode_scalar(value, type_name)


def property_header(key: str, type_name: str) -> str:
    """`name:Type` for a key that passes `key_ok`."""
    return f"{key}:{type_name}"


def encode_labels(labels: Iterable[str]) -> str:
    return LABEL_SEPARATOR.join(labels)


def render_csv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """RFC 4180 text: CRLF line ends, fields quoted only when they need it (comma, quote, CR or LF), quotes
    doubled. (With an LF terminator Python's csv module would leave a lone CR unquoted.)"""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL, strict=True)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
