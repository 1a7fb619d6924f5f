"""Route conditions evaluated in Python where CEL would certainly give the same answer.

A route's ``when:`` is CEL. Handing an event to the CEL library means converting
the fields conditions read into CEL values, and that conversion costs more than
everything else routing does per event. Most conditions are simple comparisons of
event fields with literals joined by ``&&``, ``||`` and ``!``; ``compile_fast``
turns such an expression into a Python function over the event's context.

The function answers only when the answer is certain: every field it reads is
present, every comparison is between two strings, two integers of CEL's ``int``
range, or (``==``/``!=``) two booleans, and every ``&&``/``||``/``!`` operand is a
boolean. Anything else (a missing field, a float, a null, a type mismatch, a value
out of range) raises ``Undecided`` and the router evaluates the condition with
CEL, so errors and CEL's own rules stay exactly what CEL says. Expressions outside
the subset (other functions, macros, indexing, floats, escapes in strings) are not
compiled at all: CEL evaluates them every time. ``convertible`` checks that the
fields a router would hand to CEL convert, so skipping the conversion never skips
an error it would have raised.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from bridge.templates import ROOT_NAMES, ReadsPlan

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
"""CEL's ``int`` range: integers outside it convert to other CEL types."""

Evaluator = Callable[[Mapping[str, Any]], Any]
FastCondition = Callable[[Mapping[str, Any]], bool]


class Undecided(Exception):
    """The fast condition cannot be sure of CEL's answer for this event: ask CEL."""


class _Unsupported(Exception):
    """The expression is outside the subset ``compile_fast`` handles."""


_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<str>'[^'\\\n]*'|\"[^\"\\\n]*\")"
    r"|(?P<int>[0-9]+)(?![A-Za-z0-9_.])"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[<>!().-])"
    r")"
)
_RESERVED = frozenset(
    {
        "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import",
        "let", "loop", "package", "namespace", "return", "var", "void", "while", "true",
        "false", "null",
    }
)  # fmt: skip
_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_EQUALITY = {"==": operator.eq, "!=": operator.ne}


def compile_fast(expression: str) -> tuple[FastCondition, list[tuple[str, ...]]] | None:
    """The expression as a Python function and the field paths it reads, or ``None``
    when it is outside the subset (CEL then evaluates it)."""
    try:
        tokens = _tokens(expression)
        parser = _Parser(tokens)
        node = parser.expression()
        if parser.position != len(tokens):
            raise _Unsupported
    except _Unsupported:
        return None
    return parser.boolean(node), parser.paths


def _tokens(expression: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    end = len(expression.rstrip())
    while position < end:
        match = _TOKEN.match(expression, position)
        if match is None or match.lastgroup is None:
            raise _Unsupported
        kind = match.lastgroup
        text = match.group(kind)
        if kind == "int" and len(text) > 1 and text[0] == "0":
            raise _Unsupported  # octal-looking literals: let CEL decide what they are
        out.append((kind, text))
        position = match.end()
    return out


class _Parser:
    """Recursive descent over CEL's precedence: ``||`` < ``&&`` < relations < ``!``."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0
        self.paths: list[tuple[str, ...]] = []
        self._booleans: dict[int, FastCondition] = {}
        """Nodes that return a ``bool`` or raise, by id (held, so ids stay theirs)."""
        self._constants: dict[int, tuple[Any, Evaluator]] = {}
        """Literal nodes by id: their value (and the node, held)."""

    def constant(self, value: Any) -> Evaluator:
        node = _constant(value)
        self._constants[id(node)] = (value, node)
        return node

    def boolean(self, node: Evaluator) -> FastCondition:
        """``node`` as a condition: its value must be a ``bool`` (else ``Undecided``)."""
        if id(node) in self._booleans:
            return node
        return self.known(_boolean(node))

    def known(self, node: FastCondition) -> FastCondition:
        self._booleans[id(node)] = node
        return node

    def peek(self) -> tuple[str, str]:
        if self.position < len(self.tokens):
            return self.tokens[self.position]
        return ("end", "")

    def take(self, text: str) -> None:
        if self.peek() != ("op", text):
            raise _Unsupported
        self.position += 1

    def expression(self) -> Evaluator:
        node = self.conjunction()
        while self.peek() == ("op", "||"):
            self.position += 1
            node = self.known(_or(self.boolean(node), self.boolean(self.conjunction())))
        return node

    def conjunction(self) -> Evaluator:
        node = self.relation()
        while self.peek() == ("op", "&&"):
            self.position += 1
            node = self.known(_and(self.boolean(node), self.boolean(self.relation())))
        return node

    def relation(self) -> Evaluator:
        left = self.unary()
        kind, text = self.peek()
        if kind == "op" and (text in _ORDERING or text in _EQUALITY):
            self.position += 1
            right = self.unary()
            following = self.peek()
            if following[0] == "op" and (following[1] in _ORDERING or following[1] in _EQUALITY):
                raise _Unsupported  # chained relations
            constant = self._constants.get(id(right))
            if constant is not None:
                return self.known(_compare_literal(text, left, constant[0]))
            return self.known(_compare(text, left, right))
        return left

    def unary(self) -> Evaluator:
        kind, text = self.peek()
        if (kind, text) == ("op", "!"):
            self.position += 1
            return self.known(_not(self.boolean(self.unary())))
        if (kind, text) == ("op", "-"):
            self.position += 1
            kind, text = self.peek()
            if kind != "int":
                raise _Unsupported
            self.position += 1
            return self.constant(_int_literal("-" + text))
        return self.member()

    def member(self) -> Evaluator:
        kind, text = self.peek()
        if kind == "op" and text == "(":
            self.position += 1
            node = self.expression()
            self.take(")")
            return self.size_method(node)
        self.position += 1
        if kind == "int":
            return self.constant(_int_literal(text))
        if kind == "str":
            return self.constant(text[1:-1])
        if kind != "ident":
            raise _Unsupported
        if text in ("true", "false"):
            return self.constant(text == "true")
        if text == "size" and self.peek() == ("op", "("):
            self.position += 1
            node = self.expression()
            self.take(")")
            return _size(node)
        if text not in ROOT_NAMES:
            raise _Unsupported
        path = [text]
        while self.peek() == ("op", ".") and self.position + 1 < len(self.tokens):
            field_kind, field = self.tokens[self.position + 1]
            if field_kind != "ident" or field in _RESERVED:
                raise _Unsupported
            if field == "size" and self.tokens[self.position + 2 : self.position + 3] == [
                ("op", "(")
            ]:
                break
            self.position += 2
            path.append(field)
        self.paths.append(tuple(path))
        return self.size_method(_field(tuple(path)))

    def size_method(self, node: Evaluator) -> Evaluator:
        """``<node>.size()``, the last thing a member may end with in the subset."""
        if self.peek() != ("op", "."):
            return node
        self.position += 1
        if self.peek() != ("ident", "size"):
            raise _Unsupported
        self.position += 1
        self.take("(")
        self.take(")")
        if self.peek() == ("op", "."):
            raise _Unsupported
        return _size(node)


def _int_literal(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _Unsupported
    return value


def _constant(value: Any) -> Evaluator:
    return lambda context: value


def _field(path: tuple[str, ...]) -> Evaluator:
    """A field of the event's context; ``Undecided`` when absent (CEL: no such key)."""
    if len(path) == 2:
        root, name = path

        def two(context: Mapping[str, Any]) -> Any:
            value = context[root]
            if type(value) is not dict or name not in value:
                raise Undecided
            return value[name]

        return two

    def walk(context: Mapping[str, Any]) -> Any:
        value: Any = context
        for part in path:
            if type(value) is not dict or part not in value:
                raise Undecided
            value = value[part]
        return value

    if len(path) == 1:
        root = path[0]
        return lambda context: context[root]
    return walk


def _size(node: Evaluator) -> Evaluator:
    # Only lists and maps: CEL's size of a string here counts bytes, not characters.
    def size(context: Mapping[str, Any]) -> int:
        value = node(context)
        if type(value) is not list and type(value) is not dict:
            raise Undecided
        return len(value)

    return size


def _boolean(node: Evaluator) -> FastCondition:
    def boolean(context: Mapping[str, Any]) -> bool:
        value = node(context)
        if type(value) is not bool:
            raise Undecided
        return value

    return boolean


def _and(left: FastCondition, right: FastCondition) -> FastCondition:
    # CEL's && is false when either side is false, even if the other is an error.
    return lambda context: left(context) and right(context)


def _or(left: FastCondition, right: FastCondition) -> FastCondition:
    return lambda context: left(context) or right(context)


def _not(node: FastCondition) -> FastCondition:
    return lambda context: not node(context)


def _compare_literal(op: str, left: Evaluator, literal: Any) -> FastCondition:
    """``_compare`` with a literal on the right: its type is known once."""
    ordering = op in _ORDERING
    apply = _ORDERING[op] if ordering else _EQUALITY[op]
    kind = type(literal)
    if kind is int:

        def integer(context: Mapping[str, Any]) -> bool:
            value = left(context)
            if type(value) is not int or not INT_MIN <= value <= INT_MAX:
                raise Undecided
            return bool(apply(value, literal))

        return integer
    if kind is str or (kind is bool and not ordering):

        def same_kind(context: Mapping[str, Any]) -> bool:
            value = left(context)
            if type(value) is not kind:
                raise Undecided
            return bool(apply(value, literal))

        return same_kind
    return _compare(op, left, _constant(literal))


def _compare(op: str, left: Evaluator, right: Evaluator) -> FastCondition:
    ordering = op in _ORDERING
    apply = _ORDERING[op] if ordering else _EQUALITY[op]

    def compare(context: Mapping[str, Any]) -> bool:
        a = left(context)
        b = right(context)
        kind = type(a)
        if kind is not type(b):
            raise Undecided
        if kind is int:
            if not (INT_MIN <= a <= INT_MAX and INT_MIN <= b <= INT_MAX):
                raise Undecided
        elif kind is not str and (ordering or kind is not bool):
            raise Undecided
        return bool(apply(a, b))

    return compare


def convertible(value: Any, plan: ReadsPlan | None) -> bool:
    """Whether the parts of ``value`` that ``plan`` selects certainly convert to CEL
    values (plain strings, integers, floats, booleans, nulls, bytes, lists and maps
    with string keys); ``False`` when unsure."""
    return _plain(value, 0) if plan is None else checker(plan)(value)


def checker(plan: ReadsPlan) -> Callable[[Any], bool]:
    """``convertible`` for one plan, its walk over the plan laid out once."""
    steps = [(name, None if sub is None else checker(sub)) for name, sub in plan.items()]

    def check(value: Any) -> bool:
        if not (type(value) is dict or isinstance(value, Mapping)):
            return _plain(value, 0)
        for name, sub in steps:
            if name not in value:
                continue
            part = value[name]
            if sub is None:
                if type(part) not in _SCALARS and not _plain(part, 0):
                    return False
            elif not sub(part):
                return False
        return True

    return check


_SCALARS = frozenset({int, float, bool, type(None), bytes})
_MAX_DEPTH = 32


def _plain(value: Any, depth: int) -> bool:
    # Loops rather than all(), and a list's records checked in its own loop: this runs
    # on every event whose conditions read a list.
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is str:
        return value.isascii() or _utf8(value)
    if depth >= _MAX_DEPTH:
        return False
    if kind is list:
        items = value
    elif kind is dict:
        if not _keys(value):
            return False
        items = value.values()
    else:
        return False
    for item in items:
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is str:
            if item.isascii() or _utf8(item):
                continue
            return False
        if kind is dict and depth + 1 < _MAX_DEPTH:
            if not _keys(item):
                return False
            for inner in item.values():
                kind = type(inner)
                if kind in _SCALARS or (kind is str and inner.isascii()):
                    continue
                if not _plain(inner, depth + 2):
                    return False
            continue
        if not _plain(item, depth + 1):
            return False
    return True


def _keys(value: dict[Any, Any]) -> bool:
    """Whether every key is a string CEL takes (one joined text, not a loop)."""
    try:
        keys = "".join(value)
    except TypeError:  # a key that is no string
        return False
    return keys.isascii() or _utf8(keys)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (JSON can carry them)
        return False
    return True
