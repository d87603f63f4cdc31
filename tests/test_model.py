"""daemon.model: the hot-path constructor builds the same GraphChange as the dataclass does."""

from __future__ import annotations

from dataclasses import fields

from daemon.model import EDGE, VERTEX_PROPERTY, GraphChange, make_change


def test_make_change_sets_every_field_as_the_constructor_does() -> None:
    for args in (
        (VERTEX_PROPERTY, True, "v1", "name", "Ada", None, None, (7, 2), 1_700_000_000_000, "p"),
        (EDGE, False, "e1", "KNOWS", None, "v1", "v2", (8, 0), 0, ""),
    ):
        made, built = make_change(*args), GraphChange(*args)
        assert made == built
        # every slot is set (a field added to GraphChange must be added to make_change), origin included
        assert [getattr(made, f.name) for f in fields(GraphChange)] == [getattr(built, f.name) for f in fields(built)]
