"""A Neptune stand that also runs the statements nodestream-plugin-neptune sends (benchmarks only).

nodestream's Neptune plugin writes with Neptune-only openCypher that the FalkorDB-backed stand cannot run as is:

* `removeKeyFromMap(map, "key")` (a Neptune function; FalkorDB has none that drops a map key). The stand
  evaluates it on the request's parameters instead: every `removeKeyFromMap(...)` over the UNWIND variable
  (nested calls included) becomes a precomputed key of each row, `param.__rk0`, holding the map without those
  keys. This moves a little work from the engine into the stand, which nodestream's rows pay and the daemon's
  do not; it is small next to the query itself.
* `MERGE ... ON CREATE SET x = M ON MATCH SET x += M` (FalkorDB accepts it, but the stand's `SET x = map`
  rewrite, which keeps `~id`, does not fit inside `ON CREATE`). On a freshly created element `x = M` and
  `x += M` give the same result (the element holds only its `~id`), so the pair becomes one `SET x += M`.

Everything else (the `~id` index label, relationship handling, name encoding) is the normal stand.
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.stand.neptune_endpoint import NeptuneStand

__all__ = ["NodestreamCompatStand", "rewrite_nodestream_query"]

_UNWIND = re.compile(r"UNWIND\s+\$(?P<param>\w+)\s+[Aa][Ss]\s+(?P<var>\w+)")
_REMOVE_KEY = re.compile(r'removeKeyFromMap\(\s*(?P<inner>\w+|\x00\d+\x00)\s*,\s*"(?P<key>[^"]*)"\s*\)')
_SET_LABEL = re.compile(r"\bSET\s+\w+\s*:")
_ON_CREATE_MATCH = re.compile(
    r"ON\s+CREATE\s+SET\s+(?P<var>\w+)\s*=\s*(?P<value>[\w.$]+)\s+ON\s+MATCH\s+SET\s+(?P=var)\s*\+=\s*(?P=value)"
)


def rewrite_nodestream_query(query: str, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`query` and `parameters` with `removeKeyFromMap` precomputed and ON CREATE / ON MATCH merged."""
    if "removeKeyFromMap" not in query:
        return query, parameters
    unwind = _UNWIND.search(query)
    if unwind is None:
        return query, parameters
    param_name, var = unwind["param"], unwind["var"]
    # innermost calls first: each becomes a placeholder naming (its input, the key it drops)
    derived: list[tuple[str, str]] = []  # index -> (input: var or placeholder index, key)

    def replace(match: re.Match[str]) -> str:
        inner = match["inner"]
        if inner != var and not inner.startswith("\x00"):
            return match[0]
        entry = (inner, match["key"])
        if entry not in derived:  # the same call twice (ON CREATE and ON MATCH) reads one derived key
            derived.append(entry)
        return f"\x00{derived.index(entry)}\x00"

    text = query
    while True:
        new = _REMOVE_KEY.sub(replace, text)
        if new == text:
            break
        text = new
    # placeholders that are an input of another call are intermediate; the rest are read from the row
    names = {i: f"__rk{i}" for i in range(len(derived))}
    text = re.sub(r"\x00(\d+)\x00", lambda m: f"{var}.{names[int(m[1])]}", text)
    text = _ON_CREATE_MATCH.sub(lambda m: f"SET {m['var']} += {m['value']}", text)

    def row_with_derived(row: dict[str, Any]) -> dict[str, Any]:
        values: list[dict[str, Any]] = []
        for inner, key in derived:
            source = row if inner == var else values[int(inner.strip("\x00"))]
            values.append({k: v for k, v in source.items() if k != key})
        out = dict(row)
        for i, value in enumerate(values):
            out[names[i]] = value
        return out

    rows = parameters.get(param_name)
    if isinstance(rows, list):
        parameters = {**parameters, param_name: [row_with_derived(r) if isinstance(r, dict) else r for r in rows]}
    return text, parameters


class NodestreamCompatStand(NeptuneStand):
    """`NeptuneStand` plus the rewrites above for nodestream's statements.

    It also notes when the first query arrived and the last one was answered (`first_query_at`,
    `last_query_done_at`, `time.monotonic()`), and how many it ran, so a benchmark can time a load as the
    endpoint saw it; `reset_counters` starts afresh.
    """

    first_query_at: float | None = None
    last_query_done_at: float | None = None
    queries = 0
    label_seconds = 0.0  # summed duration of queries that set a label on a matched node (`SET n:Label`)
    query_seconds = 0.0  # summed duration of all queries (overlapping ones each count)

    def reset_counters(self) -> None:
        self.first_query_at = self.last_query_done_at = None
        self.queries = 0
        self.label_seconds = self.query_seconds = 0.0

    async def _execute(self, query: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        if self.first_query_at is None:
            self.first_query_at = time.monotonic()
        query, parameters = rewrite_nodestream_query(query, parameters)
        started = time.monotonic()
        try:
            return await super()._execute(query, parameters)
        finally:
            self.queries += 1
            self.last_query_done_at = time.monotonic()
            self.query_seconds += self.last_query_done_at - started
            if _SET_LABEL.search(query):
                self.label_seconds += self.last_query_done_at - started
