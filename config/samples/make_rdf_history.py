"""Generate the RDF quick start's sample: a small library catalogue's Neptune SPARQL change history.

Writes `library-rdf-history.jsonl.gz` next to this script: gzip of JSON lines, one Neptune SPARQL stream record
per line, as GetSparqlStream returns them (`commitTimestamp`, `eventId`, `data: {"stmt": "<s> <p> <o> <g> .\\n"}`,
`op`, `isLastOp` on the last operation of each commit). The daemon's `file` source with `format = "nquads"` replays
it (config/quickstart-rdf.toml).

Regenerate it (from the repository root; standard library only, the same bytes every time):

    python config/samples/make_rdf_history.py

The history: authors and books are catalogued (a `schema:` vocabulary), each book in the named graph of the
library branch that holds it, authors in Neptune's default graph (`DefaultNamedGraph`, which the daemon writes to
the target's default graph); books have English and French titles (language tags), page counts (`xsd:integer`)
and publication dates (`xsd:date`); authors have postal addresses as blank nodes (`_:addrN`, stable labels, which
the daemon skolemises); descriptions hold quotes, backslashes, newlines and non-ASCII text (escaped as N-Quads
escapes them). Then books move branch (REMOVE from one graph, ADD to another, in one commit), titles are
corrected (REMOVE old, ADD new), books are withdrawn (every quad removed) and some come back later (the same quads
added again).
"""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

SEED = 17
START_MS = 1_709_283_600_000  # 2024-03-01T09:00:00Z
OUTPUT = Path(__file__).resolve().parent / "library-rdf-history.jsonl.gz"
EX = "http://example.org/library/"
SCHEMA = "https://schema.org/"
XSD = "http://www.w3.org/2001/XMLSchema#"
RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
DEFAULT_GRAPH = "http://aws.amazon.com/neptune/vocab/v01/DefaultNamedGraph"
BRANCHES = ["central", "harbour", "university"]
WORDS = ["River", "Night", "Garden", "Machine", "Letters", "Winter", "Atlas", "Silence", "Orchard", "Lantern"]
FRENCH = {
    "River": "Rivière",
    "Night": "Nuit",
    "Garden": "Jardin",
    "Machine": "Machine",
    "Letters": "Lettres",
    "Winter": "Hiver",
    "Atlas": "Atlas",
    "Silence": "Silence",
    "Orchard": "Verger",
    "Lantern": "Lanterne",
}
CITIES = ["Zürich", "Malmö", "Kraków", "São Paulo", "Reykjavík"]


def literal(text: str, *, lang: str | None = None, datatype: str | None = None) -> str:
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]  # \" \\ \n \t ... and \u00XX for other controls
    suffix = f"@{lang}" if lang else f"^^<{datatype}>" if datatype else ""
    return f'"{escaped}"{suffix}'


def stmt(s: str, p: str, o: str, g: str | None) -> str:
    return f"{s} <{p}> {o}" + (f" <{g}>" if g else "") + " .\n"


def main() -> None:
    rng = random.Random(SEED)
    commits: list[list[tuple[str, str]]] = []
    books: dict[int, list[str]] = {}  # book -> its statements (as written when added)
    withdrawn: dict[int, list[str]] = {}
    branch_of: dict[int, str] = {}

    for a in range(12):
        author = f"<{EX}author/{a}>"
        address = f"_:addr{a}"
        ops = [
            stmt(author, RDF_TYPE, f"<{SCHEMA}Person>", DEFAULT_GRAPH),
            stmt(author, SCHEMA + "name", literal(f"Author {a} {rng.choice(WORDS)}"), DEFAULT_GRAPH),
            stmt(author, SCHEMA + "address", address, DEFAULT_GRAPH),
            stmt(address, SCHEMA + "addressLocality", literal(rng.choice(CITIES)), DEFAULT_GRAPH),
        ]
        commits.append([("ADD", op) for op in ops])

    def book_statements(b: int, graph: str) -> list[str]:
        book = f"<{EX}book/{b}>"
        word = WORDS[b % len(WORDS)]
        return [
            stmt(book, RDF_TYPE, f"<{SCHEMA}Book>", graph),
            stmt(book, SCHEMA + "name", literal(f"The {word} {b}", lang="en"), graph),
            stmt(book, SCHEMA + "name", literal(f"{FRENCH[word]} {b}", lang="fr"), graph),
            stmt(book, SCHEMA + "author", f"<{EX}author/{b % 12}>", graph),
            stmt(book, SCHEMA + "numberOfPages", literal(str(80 + (b * 37) % 600), datatype=XSD + "integer"), graph),
            stmt(
                book,
                SCHEMA + "datePublished",
                literal(f"19{50 + b % 50}-0{1 + b % 9}-1{b % 10}", datatype=XSD + "date"),
                graph,
            ),
            stmt(book, SCHEMA + "description", literal(f'A "{word.lower()}" story,\n\tin part {b % 3} \\ {b}'), graph),
        ]

    for b in range(60):
        branch_of[b] = rng.choice(BRANCHES)
        books[b] = book_statements(b, f"{EX}branch/{branch_of[b]}")
        commits.append([("ADD", op) for op in books[b]])

    for _ in range(240):
        roll = rng.random()
        if roll < 0.35 and books:  # move to another branch
            b = rng.choice(sorted(books))
            branch_of[b] = rng.choice([x for x in BRANCHES if x != branch_of[b]])
            new = book_statements(b, f"{EX}branch/{branch_of[b]}")
            commits.append([("REMOVE", op) for op in books[b]] + [("ADD", op) for op in new])
            books[b] = new
        elif roll < 0.65 and books:  # a corrected English title
            b = rng.choice(sorted(books))
            old = next(op for op in books[b] if '"@en <' in op)
            head, tail = old.rsplit('"@en', 1)
            new = f'{head} ({rng.choice(["revised", "2nd ed.", "abridged"])})"@en{tail}'
            commits.append([("REMOVE", old), ("ADD", new)])
            books[b] = [new if op == old else op for op in books[b]]
        elif roll < 0.85 and books:  # withdrawn
            b = rng.choice(sorted(books))
            withdrawn[b] = books.pop(b)
            commits.append([("REMOVE", op) for op in withdrawn[b]])
        elif withdrawn:  # back on the shelf
            b = rng.choice(sorted(withdrawn))
            books[b] = withdrawn.pop(b)
            commits.append([("ADD", op) for op in books[b]])

    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        for commit_num, ops in enumerate(commits, start=1):
            for op_num, (op, statement) in enumerate(ops, start=1):
                record = {
                    "commitTimestamp": START_MS + commit_num * 60_000,
                    "eventId": {"commitNum": commit_num, "opNum": op_num},
                    "data": {"stmt": statement},
                    "op": op,
                }
                if op_num == len(ops):
                    record["isLastOp"] = True
                gz.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    OUTPUT.write_bytes(out.getvalue())
    print(f"wrote {OUTPUT} ({len(commits)} commits, {sum(map(len, commits))} records)")


if __name__ == "__main__":
    main()
