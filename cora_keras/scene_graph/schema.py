"""Scene graph of a caption: entities, attributes, directed relations.

The JSON Lines form (one object per caption, in caption order) is the
schema of DATA.md section 1. This module is framework-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


class SceneGraphError(ValueError):
    """A scene graph (or a JSONL file of them) breaks the schema."""


@dataclass
class Entity:
    """An object phrase and the phrases that qualify it."""

    name: str
    attributes: list[str] = field(default_factory=list)


@dataclass
class Relation:
    """A directed relation between two entities, by index in parse order."""

    subject: int
    predicate: str
    object: int


@dataclass
class SceneGraph:
    """The parsed graph of one caption."""

    caption: str
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)

    def validate(self, where: str = "scene graph") -> None:
        """Raise SceneGraphError naming `where` and the field at fault."""
        if not isinstance(self.caption, str):
            raise SceneGraphError(f"{where}: field 'caption' must be a string")
        if not self.entities:
            raise SceneGraphError(f"{where}: field 'entities' is empty")
        for i, entity in enumerate(self.entities):
            if not isinstance(entity.name, str) or not entity.name.strip():
                raise SceneGraphError(
                    f"{where}: field 'entities[{i}].name' must be a non-empty string"
                )
            for j, attribute in enumerate(entity.attributes):
                if not isinstance(attribute, str) or not attribute.strip():
                    raise SceneGraphError(
                        f"{where}: field 'entities[{i}].attributes[{j}]' must be a "
                        "non-empty string"
                    )
        n = len(self.entities)
        for k, relation in enumerate(self.relations):
            for end in ("subject", "object"):
                index = getattr(relation, end)
                if not isinstance(index, int) or not 0 <= index < n:
                    raise SceneGraphError(
                        f"{where}: field 'relations[{k}].{end}' = {index!r} is not "
                        f"an entity index in [0, {n})"
                    )
            if not isinstance(relation.predicate, str):
                raise SceneGraphError(
                    f"{where}: field 'relations[{k}].predicate' must be a string"
                )

    def to_dict(self) -> dict:
        return {
            "caption": self.caption,
            "entities": [
                {"name": e.name, "attributes": list(e.attributes)}
                for e in self.entities
            ],
            "relations": [
                {"subject": r.subject, "predicate": r.predicate, "object": r.object}
                for r in self.relations
            ],
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "scene graph") -> "SceneGraph":
        """Build and validate a graph from its JSON object."""
        if not isinstance(data, dict):
            raise SceneGraphError(f"{where}: expected a JSON object")
        try:
            graph = cls(
                caption=data["caption"],
                entities=[
                    Entity(name=e["name"], attributes=list(e.get("attributes", [])))
                    for e in data["entities"]
                ],
                relations=[
                    Relation(
                        subject=r["subject"], predicate=r["predicate"], object=r["object"]
                    )
                    for r in data.get("relations", [])
                ],
            )
        except (KeyError, TypeError) as error:
            raise SceneGraphError(f"{where}: missing or malformed field {error}") from None
        graph.validate(where)
        return graph


def write_jsonl(graphs: Iterable[SceneGraph], path: str | os.PathLike) -> None:
    """Write graphs one per line, atomically (a temporary file then rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for graph in graphs:
            f.write(json.dumps(graph.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[Any, str]]:
    """Yield (parsed JSON, "path:line") per line; bad JSON names file and line."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            where = f"{path}:{line_number}"
            try:
                yield json.loads(line), where
            except json.JSONDecodeError as error:
                raise SceneGraphError(f"{where}: invalid JSON ({error.msg})") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[SceneGraph]:
    """Yield validated graphs; errors name the file and the 1-based line."""
    for data, where in iter_json_lines(path):
        yield SceneGraph.from_dict(data, where)


def read_jsonl(path: str | os.PathLike) -> list[SceneGraph]:
    """Read every graph of a JSON Lines file."""
    return list(iter_jsonl(path))
