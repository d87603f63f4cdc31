"""Identifier rules: how labels, relationship types and property keys from data reach Cypher text.

Values always travel as parameters; names cannot, so they are backtick-quoted here and nowhere else
(DESIGN rule 8).

* Every target: a name is a non-empty string of valid Unicode. An empty name, or one holding a lone surrogate
  (it can only come from a JSON `\\ud800`-style escape; no UTF-8 encoder takes it, neither the FalkorDB
  client nor Neptune's request body), raises `InvalidName`. The sources check the same rule at translation
  (`check_name`), so such a record is dead-lettered there with its position.
* openCypher (Neptune): a backtick inside a name is doubled. Other characters, NUL included, are left to the
  grammar, which allows any character but a backtick inside a quoted name.
* FalkorDB has no escape for a backtick inside a quoted name, its client refuses such map keys, and the engine
  reads a query only up to its first NUL byte (the client splices parameters, map keys included, into the query
  text). So every name that contains a backtick, a percent sign or a NUL is stored percent-encoded:
  ``%`` -> ``%25``, `````` -> ``%60``, NUL -> ``%00``. Names with none of them are stored as they are. The rule is
  injective, so readers can decode any stored name with `decode_falkordb_name`.
"""

from __future__ import annotations


class InvalidName(ValueError):
    """A name that no target can hold: empty, or not valid Unicode (a lone surrogate)."""


def check_name(name: str, what: str = "label, type or property key") -> str:
    """`name` if every target can hold it (after its dialect's quoting); `InvalidName` with the reason if not."""
    if name.__class__ is not str:
        raise InvalidName(f"{what} must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidName(f"empty {what}")
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise InvalidName(
                f"{what} {shown!r} is not valid Unicode (lone surrogate U+{ord(name[exc.start]):04X} at index "
                f"{exc.start})"
            ) from None
    return name


def quote_opencypher(name: str) -> str:
    """Backtick-quote `name` for openCypher, doubling backticks inside it."""
    if name.__class__ is not str or not name or not name.isascii():
        check_name(name)
    return "`" + name.replace("`", "``") + "`"


_ENCODED: dict[str, str] = {}  # names repeat in every batch: each is checked and encoded once
_ENCODED_MAX = 100_000


def encode_falkordb_name(name: str) -> str:
    """The name as FalkorDB stores it (see module doc)."""
    try:
        return _ENCODED[name]
    except (KeyError, TypeError):  # TypeError: not a string, refused below
        pass
    check_name(name)
    stored = name
    if "%" in name or "`" in name or "\x00" in name:
        stored = name.replace("%", "%25").replace("`", "%60").replace("\x00", "%00")
    if len(_ENCODED) < _ENCODED_MAX:
        _ENCODED[name] = stored
    return stored


def decode_falkordb_name(stored: str) -> str:
    """Inverse of `encode_falkordb_name`."""
    if "%" not in stored:
        return stored
    # Every "%" of a stored name starts one of the three escapes, so "%60" and "%00" can only be escapes;
    # "%25" goes last ("%2560" is the name "%60").
    return stored.replace("%60", "`").replace("%00", "\x00").replace("%25", "%")


def quote_falkordb(name: str) -> str:
    """Backtick-quote a name for FalkorDB after encoding it."""
    return "`" + encode_falkordb_name(name) + "`"
