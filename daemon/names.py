"""Identifier rules: how labels, relationship types and property keys from data reach Cypher text.

Values always travel as parameters; names cannot, so they are backtick-quoted here and nowhere else
(DESIGN rule 8).

* openCypher (Neptune): a backtick inside a name is doubled.
* FalkorDB has no escape for a backtick inside a quoted name, and its client refuses such map keys. So every
  name that contains a backtick or a percent sign is stored percent-encoded: ``%`` -> ``%25`` and
  `````` -> ``%60``. Names with neither character are stored as they are. The rule is injective, so readers can
  decode any stored name with `decode_falkordb_name`.
"""

from __future__ import annotations


class InvalidName(ValueError):
    """A name that no target can hold (empty)."""


def quote_opencypher(name: str) -> str:
    """Backtick-quote `name` for openCypher, doubling backticks inside it."""
    if not name:
        raise InvalidName("empty label, type or property key")
    return "`" + name.replace("`", "``") + "`"


def encode_falkordb_name(name: str) -> str:
    """The name as FalkorDB stores it (see module doc)."""
    if not name:
        raise InvalidName("empty label, type or property key")
    if "%" in name or "`" in name:
        return name.replace("%", "%25").replace("`", "%60")
    return name


def decode_falkordb_name(stored: str) -> str:
    """Inverse of `encode_falkordb_name`."""
    if "%" not in stored:
        return stored
    return stored.replace("%60", "`").replace("%25", "%")


def quote_falkordb(name: str) -> str:
    """Backtick-quote a name for FalkorDB after encoding it."""
    return "`" + encode_falkordb_name(name) + "`"
