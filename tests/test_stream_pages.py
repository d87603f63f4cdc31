"""The Neptune stream reader's page size (`daemon.sources.stream_reader`): `limit` when caught up, doubling while
behind up to `limit_max` when the apply loop waits for records, back to `limit` after a short page or while
pages wait; and the `limit_max` key's validation."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.config import DEFAULT_STREAM_LIMIT_MAX, ConfigError, NeptuneSourceConfig, load_config
from daemon.sources.stream_reader import StreamReader


class Stream:
    """A stream of `total` one-op commits; answers at most `cap` records (the API's 10 MB cut); records the
    `limit` of every read."""

    def __init__(self, total: int, cap: int = 10**9) -> None:
        self.total, self.cap = total, cap
        self.asked: list[int] = []

    async def get_propertygraph_stream(self, *, limit: int, iteratorType: str, **position: Any) -> dict[str, Any]:
        self.asked.append(limit)
        start = position.get("commitNum", 0) if iteratorType == "AFTER_SEQUENCE_NUMBER" else 0
        end = min(self.total, start + min(limit, self.cap))
        return {"records": [{"eventId": {"commitNum": c, "opNum": 1}} for c in range(start + 1, end + 1)]}


async def read(stream: Stream, reader: StreamReader) -> list[int]:
    """Sizes of the pages read until caught up."""
    sizes = []
    async for page in reader.pages():
        if page.caught_up:
            return sizes
        sizes.append(len(page.records))
    raise AssertionError("unreachable")


async def test_pages_double_while_behind_and_the_apply_loop_waits() -> None:
    stream = Stream(40_000)
    reader = StreamReader(stream, limit=1000, limit_max=8000, may_grow=lambda: True, idle_min=0.001)
    sizes = await read(stream, reader)
    assert stream.asked[:5] == [1000, 2000, 4000, 8000, 8000]
    assert sum(sizes) == 40_000
    assert reader.limit == 1000  # caught up: back to `limit`


async def test_pages_stay_at_limit_while_pages_wait_for_the_apply_loop() -> None:
    stream = Stream(5000)
    waiting = iter([True, False, True, True, False, False])  # may_grow() answers, in order
    reader = StreamReader(stream, limit=1000, limit_max=8000, may_grow=lambda: next(waiting), idle_min=0.001)
    await read(stream, reader)
    assert stream.asked[:4] == [1000, 2000, 1000, 2000]


async def test_a_page_cut_by_size_keeps_the_size_and_a_fixed_reader_never_grows() -> None:
    capped = Stream(30_000, cap=3000)
    reader = StreamReader(capped, limit=1000, limit_max=16_000, may_grow=lambda: True, idle_min=0.001)
    await read(capped, reader)
    assert capped.asked[:5] == [1000, 2000, 4000, 4000, 4000]  # 3,000 records of 4,000 asked: keep asking 4,000
    fixed = Stream(5000)
    await read(fixed, StreamReader(fixed, limit=1000, idle_min=0.001))  # capture: no limit_max, no may_grow
    assert set(fixed.asked) == {1000}


def _source(**keys: Any) -> dict[str, Any]:
    return {"name": "s", "kind": "neptune", "sink": "t", "endpoint": "https://db:8182", "region": "us-east-1", **keys}


def test_limit_max_defaults_and_validation(tmp_path: Any) -> None:
    assert NeptuneSourceConfig.model_validate(_source()).page_limit_max == DEFAULT_STREAM_LIMIT_MAX
    assert NeptuneSourceConfig.model_validate(_source(limit=50_000)).page_limit_max == 50_000
    assert NeptuneSourceConfig.model_validate(_source(limit=500, limit_max=500)).page_limit_max == 500
    path = tmp_path / "c.toml"
    path.write_text(
        '[[sources]]\nname = "s"\nkind = "neptune"\nsink = "t"\nendpoint = "https://db:8182"\nregion = "us-east-1"\n'
        'limit = 2000\nlimit_max = 1000\n[sinks.t]\nkind = "falkordb"\nurl = "redis://localhost:6379"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == 'config error: sources[0] (name "s").limit_max: should be >= limit (2000)'
