"""Package surfaces that load their modules on first use (PEP 562).

``bridge`` and ``bridge.sdk`` re-export names from many modules. Importing them
eagerly would make every process pay for all of it: the HTTP API would load the
worker machinery of the Temporal SDK, a workflow the consumer's. Each package
instead names where every export lives, and the module holding it is imported
the first time the name is read (``from bridge import Saga`` included); the value
is then cached in the package's namespace, so later reads cost nothing.

The import goes through ``__import__``, not ``importlib``: inside Temporal's
workflow sandbox that is the hook which passes modules through, and a name first
read inside a sandbox is always imported as passed through (whatever the worker's
runner passes through), so the value cached for every later reader is the
process's own, never a sandbox's copy.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any


def exports(
    package: str,
    namespace: dict[str, Any],
    modules: Mapping[str, Iterable[str]],
    renamed: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` (``namespace`` is its ``globals()``).

    ``modules`` maps each module to the names it exports under their own names;
    ``renamed`` maps an exported name to ``"module:attribute"``, or to ``"module"``
    when the name is that module.
    """
    where = {name: f"{module}:{name}" for module, names in modules.items() for name in names}
    where.update(renamed or {})

    def getattr_(name: str) -> Any:
        target = where.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = target.partition(":")
        with _passed_through():
            __import__(module)
        value = sys.modules[module]
        if attribute:
            value = getattr(value, attribute)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *where})

    return getattr_, dir_


@contextlib.contextmanager
def _passed_through() -> Iterator[None]:
    """Inside Temporal's workflow sandbox, pass the import through; else nothing.

    ``temporalio.workflow`` is only looked up, never imported: without it loaded there
    is no sandbox, and ``import bridge`` stays free of Temporal.
    """
    workflow = sys.modules.get("temporalio.workflow")
    if workflow is not None and workflow.unsafe.in_sandbox():
        with workflow.unsafe.imports_passed_through():
            yield
    else:
        yield
