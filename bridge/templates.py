"""Field paths over events: route templates, argument paths and what conditions read.

A route names event fields as dotted paths under a few roots (``data.order_id``,
``key``, ``tenant``). ``Template`` fills ``"order-{data.order_id}"`` strings,
``condition_paths`` finds the paths a CEL condition reads, and a reads plan
selects just those parts of an event for the condition's context.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import ConfigError

ROOT_NAMES = frozenset({"data", "id", "type", "source", "subject", "tenant", "key", "topic"})


def lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = context
    for part in path:
        # Decoded events are plain dicts: test for them first, the ABC check is slower.
        if (type(value) is dict or isinstance(value, Mapping)) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(".".join(path))
    return value


_MISSING = object()


def getter(path: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """``lookup`` of one path, with plain dicts one or two levels deep read directly."""
    if len(path) == 1:
        (name,) = path

        def one(context: Mapping[str, Any]) -> Any:
            if type(context) is dict:
                value = context.get(name, _MISSING)
                if value is not _MISSING:
                    return value
            return lookup(context, path)

        return one
    if len(path) == 2:
        root, name = path

        def two(context: Mapping[str, Any]) -> Any:
            if type(context) is dict:
                parent = context.get(root)
                if type(parent) is dict:
                    value = parent.get(name, _MISSING)
                    if value is not _MISSING:
                        return value
            return lookup(context, path)

        return two
    return lambda context: lookup(context, path)


@dataclass(frozen=True)
class Template:
    """A ``"order-{data.order_id}"`` string template, parsed once."""

    source: str
    parts: tuple[tuple[str, tuple[str, ...] | None], ...]
    _format: str = field(init=False, repr=False, compare=False)
    """The literals with a ``{}`` per field: rendering is one ``str.format``."""
    _getters: tuple[tuple[Callable[[Mapping[str, Any]], Any], tuple[str, ...]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        pieces = []
        getters = []
        for literal, path in self.parts:
            if path is None:
                pieces.append(literal.replace("{", "{{").replace("}", "}}"))
            else:
                pieces.append("{}")
                getters.append((getter(path), path))
        object.__setattr__(self, "_format", "".join(pieces))
        object.__setattr__(self, "_getters", tuple(getters))

    @classmethod
    def parse(cls, text: str) -> Template:
        """Split the template into literals and dotted field paths."""
        parts: list[tuple[str, tuple[str, ...] | None]] = []
        try:
            for literal, name, spec, conv in string.Formatter().parse(text):
                if literal:
                    parts.append((literal, None))
                if name is not None:
                    if not name or spec or conv:
                        raise ConfigError(f"template {text!r}: use plain {{field.path}} only")
                    parts.append(("", tuple(name.split("."))))
        except ValueError as exc:
            raise ConfigError(f"template {text!r}: {exc}") from exc
        return cls(text, tuple(parts))

    def paths(self) -> list[tuple[str, ...]]:
        """Field paths the template reads."""
        return [p for _, p in self.parts if p is not None]

    def render(self, context: Mapping[str, Any]) -> str:
        """Fill the template; ``KeyError`` names a missing field path."""
        values = []
        for get, path in self._getters:
            value = get(context)
            if value is None or value == "":
                raise KeyError(".".join(path))
            values.append(str(value))
        return self._format.format(*values)

    def value(self, context: Mapping[str, Any]) -> Any:
        """The field's own value (a number stays a number) when the template is one
        ``{field}`` and nothing else; otherwise the filled string. ``KeyError`` as
        ``render``."""
        if len(self.parts) == 1 and self.parts[0][1] is not None:
            return _present(context, self.parts[0][1])
        return self.render(context)


def _present(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path``; ``KeyError`` when it is absent, null or empty."""
    value = lookup(context, path)
    if value is None or value == "":
        raise KeyError(".".join(path))
    return value


_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_DOTTED = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def condition_paths(expression: str) -> list[tuple[str, ...]]:
    """Dotted field paths a CEL expression reads from the event (for ``routes check``)."""
    stripped = _STRING_LITERAL.sub("''", expression)
    found = []
    for match in _DOTTED.finditer(stripped):
        parts = tuple(match.group(1).split("."))
        if parts[0] in ROOT_NAMES:
            # ``data.items.size()`` is a method call on ``data.items``.
            end = match.end()
            if stripped[end : end + 1] == "(" and len(parts) > 1:
                parts = parts[:-1]
            found.append(parts)
    return found


ReadsPlan = dict[str, "ReadsPlan | None"]
"""Which fields conditions read: a nested map of names; ``None`` means the whole value."""


def reads_plan(paths: Iterable[tuple[str, ...]]) -> ReadsPlan:
    """Merge field paths into a plan; a path read whole covers every longer one under it."""
    plan: ReadsPlan = {}
    for path in sorted(set(paths), key=len):
        node = plan
        for depth, part in enumerate(path):
            if part in node and node[part] is None:
                break
            if depth == len(path) - 1:
                node[part] = None
                break
            child = node.setdefault(part, {})
            assert child is not None
            node = child
    return plan


def select(value: Any, plan: ReadsPlan | None) -> Any:
    """The parts of ``value`` a plan names; anything that is not a mapping is kept whole.

    A field the event lacks stays absent, so a condition reading it fails (or
    ``has()`` is false) exactly as it would on the full event.
    """
    if plan is None or not isinstance(value, Mapping):
        return value
    return {name: select(value[name], sub) for name, sub in plan.items() if name in value}
