"""Reading the project's JSON/YAML documents (model manifests, protocols): one parser and one
way of naming the field at fault.

Documents come from users (uploaded manifests, inline protocols), so their reading is bounded:
at most :data:`MAX_DOCUMENT_CHARS` characters, nested at most :data:`MAX_DEPTH` mappings and
lists deep (checked before JSON is parsed, and as YAML is composed: the parsers recurse once per
level), and YAML without aliases (``*name``: the loader shares the anchored value, so a few
lines of aliases of aliases stand for billions of values to every reader of the result).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError
from yaml.nodes import Node

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_CHARS",
    "read_document",
    "read_mapping",
    "validation_problem",
]

#: the longest document read (a manifest or a protocol has a few thousand characters)
MAX_DOCUMENT_CHARS = 256 * 2**10
#: the deepest nesting of mappings and lists a document may have (manifests and protocols
#: have at most five levels)
MAX_DEPTH = 32
#: a JSON string (an unclosed one runs to the end), and what is not a bracket
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")


class _Refused(ValueError):
    """A document past the bounds (its message says which), refused before or while parsing."""


def _too_long(source: str, size: int, unit: str, most: int = MAX_DOCUMENT_CHARS) -> _Refused:
    return _Refused(f"{source} is too large ({size} {unit}); at most {most} characters are read")


def _too_deep(source: str) -> _Refused:
    return _Refused(
        f"{source} nests mappings and lists more than {MAX_DEPTH} levels deep; "
        f"at most {MAX_DEPTH} are accepted"
    )


def _check_json_depth(text: str, source: str) -> None:
    """Refuse JSON text nested past :data:`MAX_DEPTH`, from its brackets outside strings (in
    linear time, no recursion; text that is not JSON is left to the parser to refuse: it stops
    at the first character out of place, before any nesting that follows it)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    steps = np.frombuffer(brackets, np.uint8)
    opening = (steps == ord("[")) | (steps == ord("{"))
    depths = np.cumsum(np.where(opening, 1, -1), dtype=np.int32)
    if depths.size and int(depths.max()) > MAX_DEPTH:
        raise _too_deep(source)


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing aliases, and nesting past :data:`MAX_DEPTH` before it
    descends into the level that would pass it."""

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source, self.depth = source, 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            alias: yaml.AliasEvent = self.current_event
            raise _Refused(
                f"{self.source} uses the alias *{alias.anchor}; aliases are not accepted: "
                "write the value out"
            )
        if not self.check_event(yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        if self.depth == MAX_DEPTH:
            raise _too_deep(self.source)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _load_yaml(text: str, source: str) -> Any:
    loader = _BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_document(path: Path, source: str) -> str:
    """A document file's UTF-8 text, refused (``ValueError`` naming ``source``, which should
    not be a server path) when it cannot be read, is not UTF-8 or is far too long for
    :func:`read_mapping` (judged from its size, before it is read)."""
    try:
        size = path.stat().st_size
        if size > 4 * MAX_DOCUMENT_CHARS:  # UTF-8 has at most four bytes a character
            raise _too_long(source, size, "bytes")
        raw = path.read_bytes()
    except OSError as exc:  # its message would quote the path
        raise ValueError(f"cannot read {source}: {exc.strerror or type(exc).__name__}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{source} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from exc


def read_mapping(
    text: str, source: str, *, as_json: bool = False, max_chars: int = MAX_DOCUMENT_CHARS
) -> dict[str, Any]:
    """Parse ``text`` (YAML, or strict JSON with ``as_json``) into a mapping; ``ValueError``
    naming ``source`` otherwise. YAML is read with the safe loader only, without aliases; at
    most ``max_chars`` characters, nested at most :data:`MAX_DEPTH` levels."""
    if len(text) > max_chars:
        raise _too_long(source, len(text), "characters", max_chars)
    try:
        if as_json:
            _check_json_depth(text, source)
            data = json.loads(text)
        else:
            data = _load_yaml(text, source)
    except _Refused:
        raise
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: e.g. an integer of 5000 digits
        raise ValueError(f"{source} is not valid JSON/YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{source} must hold a mapping of fields, got {type(data).__name__}")
    return data


def validation_problem(exc: ValidationError) -> tuple[str | None, str]:
    """The first problem of a pydantic validation: ``(dotted field or None, message)``, the
    message counting any further problems."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return where, message
