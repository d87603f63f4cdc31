"""What `graph-replicator query` prints: rows of a target's answer as JSON values a person (or a script) reads.

Room in the design: the read side of the sinks. FalkorDB answers with client objects (`Node`, `Edge`, `Path`) and
Neptune openCypher with its JSON (`~id`, `~labels`, `~properties`, ...); both become the same plain shape:

    node: {"id": <the replicated id>, "labels": [...], "properties": {...}}
    edge: {"id": <the replicated id>, "type": "...", "from": ..., "to": ..., "properties": {...}}
    path: {"nodes": [...], "edges": [...]}

The id property and the base label every replicated FalkorDB vertex carries (`id_property`, `base_label`) are
lifted out; names stored encoded (`daemon.names`) are decoded. Values are printed as JSON (`true`, `null`,
`[1, 2]`), never as Python reprs. Formats: `table` (aligned columns, strings bare), `json` (one JSON object per
row: JSON lines) and `csv` (a header, then one line per row; nodes and maps as JSON text in their cell).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from daemon.names import decode_falkordb_name

FORMATS = ("table", "json", "csv")


class Plain:
    """Turns a target's answer values into JSON-ready ones for one sink's id property and base label."""

    def __init__(self, id_property: str = "~id", base_label: str | None = None) -> None:
        self.id_property, self.base_label = id_property, base_label

    def value(self, value: Any) -> Any:
        from falkordb import Edge, Node, Path

        if isinstance(value, Node):
            props = dict(value.properties)
            labels = [decode_falkordb_name(label) for label in (value.labels or []) if label != self.base_label]
            return {"id": props.pop(self.id_property, None), "labels": labels, "properties": self._props(props)}
        if isinstance(value, Edge):
            props = dict(value.properties)
            return {
                "id": props.pop(self.id_property, None),
                "type": decode_falkordb_name(value.relation) if value.relation else None,
                "properties": self._props(props),
            }
        if isinstance(value, Path):
            return {"nodes": [self.value(n) for n in value.nodes()], "edges": [self.value(e) for e in value.edges()]}
        if isinstance(value, dict):
            entity = value.get("~entityType")
            if entity == "node":
                return {
                    "id": value.get("~id"),
                    "labels": list(value.get("~labels", [])),
                    "properties": self._props(value.get("~properties", {})),
                }
            if entity == "relationship":
                return {
                    "id": value.get("~id"),
                    "type": value.get("~type"),
                    "from": value.get("~start"),
                    "to": value.get("~end"),
                    "properties": self._props(value.get("~properties", {})),
                }
            return {str(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        return str(value)

    def _props(self, props: dict[str, Any]) -> dict[str, Any]:
        return {decode_falkordb_name(str(k)): self.value(v) for k, v in props.items()}

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {str(k): self.value(v) for k, v in row.items()}


def _cell(value: Any) -> str:
    """A value in a table or CSV cell: strings bare, everything else as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def write_rows(rows: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> int:
    """Print plain rows in `fmt`; returns how many were printed."""
    rows = list(rows)
    if fmt == "json":
        for row in rows:
            out.write(orjson.dumps(row).decode() + "\n")
        return len(rows)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[c]) if c in row else "" for c in columns])
        return len(rows)
    if not rows:
        out.write("(no rows)\n")
        return 0
    table = [columns] + [[_cell(row.get(c)).replace("\n", "\\n") for c in columns] for row in rows]  # one line a row
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for i, line in enumerate(table):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n")
        if i == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    return len(rows)
