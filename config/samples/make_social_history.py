"""Generate the quick start's sample: a small social network's Neptune change history.

Writes `social-history.jsonl.gz` next to this script: gzip of JSON lines, one Neptune property-graph stream
record per line, exactly as GetPropertygraphStream returns them (`commitTimestamp`, `eventId`, `data`, `op`,
`isLastOp` on the last operation of each commit). The daemon's `file` source replays it
(config/quickstart.toml).

Regenerate it (from the repository root; standard library only, the same bytes every time):

    python config/samples/make_social_history.py

The history: people join, follow and unfollow each other, write posts and comments (comments reply to posts
or to other comments), like and unlike them and change their reactions, edit their profiles (a property update
is a `vp` REMOVE of the old value and a `vp` ADD of the new one, in one commit), gain and lose the `Verified`
label, delete posts, and leave (their vertex is dropped); some who left come back under the same id. Edges:
FOLLOWS (Person -> Person), WROTE (Person -> Post | Comment), LIKES (Person -> Post | Comment), REPLIED
(Comment -> Post | Comment).

A drop is serialised as Neptune does: in one commit, for every incident edge its `ep` REMOVEs then its `e`
REMOVE, then the vertex's `vp` REMOVEs, then its `vl` REMOVEs. Removing an edge alone removes its properties
first too.

Deterministic: every choice comes from one seeded `random.Random`, every collection iterated is ordered, the
timestamps are synthetic and the gzip header carries no name and mtime 0.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
from pathlib import Path
from typing import Any

SEED = 2024
COMMITS = 1500
START_MS = 1_709_283_600_000  # 2024-03-01T09:00:00Z
OUTPUT = Path(__file__).resolve().parent / "social-history.jsonl.gz"

FIRST = (
    "Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances", "Dennis", "Radia",
    "Linus", "Sophie", "Tim", "Hedy", "John", "Katherine", "Niklaus", "Anita", "Guido", "Zoë", "José", "Mei",
    "Aarav", "Chloé", "Søren", "Yuki", "Amara", "Mateo", "Ingrid",
)  # fmt: skip
LAST = (
    "Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Allen", "Ritchie",
    "Perlman", "Torvalds", "Wilson", "Berners-Lee", "Lamarr", "McCarthy", "Johnson", "Wirth", "Borg", "Rossum",
)  # fmt: skip
CITIES = ("Lisbon", "Berlin", "Nairobi", "Osaka", "Toronto", "São Paulo", "Reykjavík", "Pune", "Austin", "Oslo")
TOPICS = (
    "graph databases", "sourdough", "trail running", "jazz", "compilers", "the night sky", "tide pools",
    "bike repair", "chess openings", "street food", "synthesizers", "old maps",
)  # fmt: skip
POST_SHAPES = (
    "Spent the weekend on {topic}. Ask me anything!",
    "Hot take: {topic} is underrated.",
    "Looking for tips on {topic} around {city}.",
    "Photo dump from {city}, mostly {topic}.",
    "Day {n} of learning about {topic}.",
)
COMMENT_SHAPES = ("Love this!", "Totally agree.", "Not sure about that...", "Same here in {city}.", "Source?", "+1")
REACTIONS = ("like", "love", "laugh", "wow")


class SocialHistory:
    """The generator: the current state of the network and the commits emitted so far."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = START_MS
        self.commits: list[tuple[int, list[dict[str, Any]]]] = []  # (commit time, ops)
        self.ops: list[dict[str, Any]] = []
        self.vertices: dict[str, dict[str, Any]] = {}  # id -> {"labels": [...], "props": {key: value object}}
        self.edges: dict[str, dict[str, Any]] = {}  # id -> {"type", "from", "to", "props"}
        self.incident: dict[str, list[str]] = {}  # vertex id -> edge ids, in creation order
        self.people: list[str] = []
        self.content: list[str] = []  # posts and comments
        self.gone: list[str] = []  # ids of people who left
        self.next_id = {"person": 0, "post": 0, "comment": 0, "edge": 0}

    # -- records -----------------------------------------------------------------------------------

    def _op(self, op: str, data: dict[str, Any]) -> None:
        self.ops.append({"op": op, "data": data})

    def _commit(self) -> None:
        self.clock += self.rng.randint(1_000, 90_000)
        self.commits.append((self.clock, self.ops))
        self.ops = []

    def records(self) -> list[dict[str, Any]]:
        out = []
        for commit_num, (stamp, ops) in enumerate(self.commits, start=1):
            for op_num, op in enumerate(ops, start=1):
                record = {"commitTimestamp": stamp, "eventId": {"commitNum": commit_num, "opNum": op_num}}
                record.update(data=op["data"], op=op["op"])
                if op_num == len(ops):
                    record["isLastOp"] = True
                out.append(record)
        return out

    # -- primitive changes ---------------------------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        self.next_id[kind] += 1
        return f"{kind}-{self.next_id[kind]}"

    def _label(self, op: str, vertex_id: str, label: str) -> None:
        data = {"id": vertex_id, "type": "vl", "key": "label", "value": {"value": label, "dataType": "String"}}
        self._op(op, data)

    def _prop(self, op: str, kind: str, element_id: str, key: str, value: dict[str, Any]) -> None:
        self._op(op, {"id": element_id, "type": kind, "key": key, "value": value})

    def _set(self, kind: str, element_id: str, key: str, value: dict[str, Any]) -> None:
        """Set a property: REMOVE the old value (if any), then ADD the new one."""
        props = (self.vertices if kind == "vp" else self.edges)[element_id]["props"]
        if key in props:
            self._prop("REMOVE", kind, element_id, key, props[key])
        props[key] = value
        self._prop("ADD", kind, element_id, key, value)

    def _unset(self, kind: str, element_id: str, key: str) -> None:
        props = (self.vertices if kind == "vp" else self.edges)[element_id]["props"]
        self._prop("REMOVE", kind, element_id, key, props.pop(key))

    def _add_vertex(self, vertex_id: str, label: str, props: dict[str, dict[str, Any]]) -> None:
        self.vertices[vertex_id] = {"labels": [label], "props": {}}
        self._label("ADD", vertex_id, label)
        for key, value in props.items():
            self._set("vp", vertex_id, key, value)

    def _edge_data(self, edge_id: str) -> dict[str, Any]:
        edge = self.edges[edge_id]
        return {
            "id": edge_id,
            "type": "e",
            "key": "label",
            "value": {"value": edge["type"], "dataType": "String"},
            "from": edge["from"],
            "to": edge["to"],
        }

    def _add_edge(self, type_: str, from_id: str, to_id: str, props: dict[str, dict[str, Any]]) -> str:
        edge_id = self._new_id("edge")
        self.edges[edge_id] = {"type": type_, "from": from_id, "to": to_id, "props": {}}
        self.incident.setdefault(from_id, []).append(edge_id)
        self.incident.setdefault(to_id, []).append(edge_id)
        self._op("ADD", self._edge_data(edge_id))
        for key, value in props.items():
            self._set("ep", edge_id, key, value)
        return edge_id

    def _remove_edge(self, edge_id: str) -> None:
        for key in list(self.edges[edge_id]["props"]):
            self._unset("ep", edge_id, key)
        self._op("REMOVE", self._edge_data(edge_id))
        edge = self.edges.pop(edge_id)
        for vertex_id in (edge["from"], edge["to"]):
            self.incident[vertex_id].remove(edge_id)

    def _drop_vertex(self, vertex_id: str) -> None:
        """Neptune's order: each incident edge (its properties, then itself), the properties, the labels."""
        for edge_id in list(self.incident.get(vertex_id, [])):
            self._remove_edge(edge_id)
        for key in list(self.vertices[vertex_id]["props"]):
            self._unset("vp", vertex_id, key)
        for label in self.vertices[vertex_id]["labels"]:
            self._label("REMOVE", vertex_id, label)
        del self.vertices[vertex_id]
        self.incident.pop(vertex_id, None)

    # -- values ------------------------------------------------------------------------------------

    @staticmethod
    def _s(text: str) -> dict[str, Any]:
        return {"value": text, "dataType": "String"}

    def _date(self) -> dict[str, Any]:
        return {"value": self.clock, "dataType": "Date"}

    def _text(self, shapes: tuple[str, ...]) -> dict[str, Any]:
        shape = self.rng.choice(shapes)
        topic, city = self.rng.choice(TOPICS), self.rng.choice(CITIES)
        return self._s(shape.format(topic=topic, city=city, n=self.rng.randint(2, 100)))

    def _person_props(self) -> dict[str, dict[str, Any]]:
        props = {
            "name": self._s(f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"),
            "age": {"value": self.rng.randint(18, 80), "dataType": "Int"},
            "city": self._s(self.rng.choice(CITIES)),
            "joined": self._date(),
            "karma": {"value": round(self.rng.uniform(0, 500), 2), "dataType": "Double"},
            "private": {"value": self.rng.random() < 0.2, "dataType": "Bool"},
        }
        if self.rng.random() < 0.5:
            props["bio"] = self._s(f"Into {self.rng.choice(TOPICS)} and {self.rng.choice(TOPICS)}.")
        return props

    # -- actions (one commit each) ------------------------------------------------------------------

    def join(self) -> None:
        person = self._new_id("person")
        self._add_vertex(person, "Person", self._person_props())
        self.people.append(person)

    def come_back(self) -> None:
        person = self.gone.pop(self.rng.randrange(len(self.gone)))
        self._add_vertex(person, "Person", self._person_props())
        self.people.append(person)

    def leave(self) -> None:
        person = self.people.pop(self.rng.randrange(len(self.people)))
        self._drop_vertex(person)
        self.gone.append(person)

    def post(self) -> None:
        author, post = self.rng.choice(self.people), self._new_id("post")
        props = {
            "text": self._text(POST_SHAPES),
            "created": self._date(),
            "views": {"value": 0, "dataType": "Long"},
        }
        self._add_vertex(post, "Post", props)
        self._add_edge("WROTE", author, post, {})
        self.content.append(post)

    def comment(self) -> None:
        author, parent, comment = self.rng.choice(self.people), self.rng.choice(self.content), self._new_id("comment")
        self._add_vertex(comment, "Comment", {"text": self._text(COMMENT_SHAPES), "created": self._date()})
        self._add_edge("WROTE", author, comment, {})
        self._add_edge("REPLIED", comment, parent, {})
        self.content.append(comment)

    def delete_content(self) -> None:
        item = self.content.pop(self.rng.randrange(len(self.content)))
        self._drop_vertex(item)

    def _edges_of(self, type_: str) -> list[str]:
        return [edge_id for edge_id, edge in self.edges.items() if edge["type"] == type_]

    def _connected(self, type_: str, from_id: str, to_id: str) -> bool:
        return any(
            self.edges[e]["type"] == type_ and self.edges[e]["to"] == to_id for e in self.incident.get(from_id, [])
        )

    def follow(self) -> None:
        a, b = self.rng.sample(self.people, 2)
        if not self._connected("FOLLOWS", a, b):
            props = {"since": self._date()}
            if self.rng.random() < 0.3:
                props["notify"] = {"value": True, "dataType": "Bool"}
            self._add_edge("FOLLOWS", a, b, props)

    def unfollow(self) -> None:
        self._remove_edge(self.rng.choice(self._edges_of("FOLLOWS")))

    def like(self) -> None:
        person, item = self.rng.choice(self.people), self.rng.choice(self.content)
        if not self._connected("LIKES", person, item):
            self._add_edge("LIKES", person, item, {"at": self._date(), "reaction": self._s(self.rng.choice(REACTIONS))})

    def unlike(self) -> None:
        self._remove_edge(self.rng.choice(self._edges_of("LIKES")))

    def react_again(self) -> None:
        like = self.rng.choice(self._edges_of("LIKES"))
        self._set("ep", like, "reaction", self._s(self.rng.choice(REACTIONS)))

    def edit_profile(self) -> None:
        person = self.rng.choice(self.people)
        props = self.vertices[person]["props"]
        choice = self.rng.random()
        if choice < 0.3:
            self._set("vp", person, "city", self._s(self.rng.choice(CITIES)))
        elif choice < 0.5:
            self._set("vp", person, "karma", {"value": round(self.rng.uniform(0, 500), 2), "dataType": "Double"})
        elif choice < 0.6:
            self._set("vp", person, "age", {"value": props["age"]["value"] + 1, "dataType": "Int"})
        elif choice < 0.75:
            self._set("vp", person, "private", {"value": not props["private"]["value"], "dataType": "Bool"})
        elif "bio" in props:
            self._unset("vp", person, "bio")
        else:
            self._set("vp", person, "bio", self._s(f"Now mostly {self.rng.choice(TOPICS)}."))

    def verify(self) -> None:
        person = self.rng.choice(self.people)
        labels = self.vertices[person]["labels"]
        if "Verified" in labels:
            labels.remove("Verified")
            self._label("REMOVE", person, "Verified")
        else:
            labels.append("Verified")
            self._label("ADD", person, "Verified")

    def view(self) -> None:
        post = self.rng.choice([c for c in self.content if c.startswith("post-")] or self.content)
        props = self.vertices[post]["props"]
        if "views" in props:
            views = props["views"]["value"] + self.rng.randint(1, 500)
            self._set("vp", post, "views", {"value": views, "dataType": "Long"})
        else:
            self._set("vp", post, "text", self._text(COMMENT_SHAPES))  # a comment: an edit

    # -- the history -------------------------------------------------------------------------------

    def step(self) -> None:
        """One commit: an action chosen by weight among those possible now."""
        actions = [(self.join, 6 if len(self.people) < 120 else 1)]
        if len(self.people) >= 2:
            actions += [(self.follow, 14), (self.post, 6), (self.edit_profile, 8), (self.verify, 2)]
        if len(self.people) > 30:
            actions.append((self.leave, 1))
        if self.gone:
            actions.append((self.come_back, 1))
        if self.content:
            actions += [(self.comment, 6), (self.like, 14), (self.view, 5)]
        if len(self.content) > 20:
            actions.append((self.delete_content, 1))
        if self._edges_of("FOLLOWS"):
            actions.append((self.unfollow, 3))
        if self._edges_of("LIKES"):
            actions += [(self.unlike, 3), (self.react_again, 3)]
        action = self.rng.choices([a for a, _ in actions], weights=[w for _, w in actions])[0]
        action()
        if self.ops:
            self._commit()


def generate(seed: int = SEED, commits: int = COMMITS) -> list[dict[str, Any]]:
    """The stream records of a history of `commits` commits."""
    history = SocialHistory(seed)
    while len(history.commits) < commits:
        history.step()
    return history.records()


def write(records: list[dict[str, Any]], path: Path) -> None:
    """gzip of JSON lines, byte-for-byte reproducible (no file name and mtime 0 in the gzip header)."""
    text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as out:
        out.write(text.encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT.name} next to this script")
    args = parser.parse_args()
    records = generate()
    write(records, args.output)
    print(f"wrote {len(records)} records in {COMMITS} commits to {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
