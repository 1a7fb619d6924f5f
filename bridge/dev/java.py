"""The Java runtimes the local stack can use: ``$JAVA_HOME`` or ``java`` on ``PATH``
first, then the JDKs installed side by side (``/usr/lib/jvm`` and the like)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import StackError

# Where operating systems put JDKs side by side: Debian/Ubuntu/Fedora, macOS.
JDK_ROOTS = (Path("/usr/lib/jvm"), Path("/Library/Java/JavaVirtualMachines"))

_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')
_RELEASE = re.compile(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', re.MULTILINE)


@dataclass(frozen=True)
class JavaInstall:
    """A ``java`` launcher and the major version it reports."""

    java: str
    major: int


def _major(match: re.Match[str] | None) -> int | None:
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older call themselves 1.8, 1.7, ...
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def parse_java_version(text: str) -> int | None:
    """The major version in ``java -version`` output (``17``, ``25``; ``8`` for ``1.8``)."""
    return _major(_VERSION.search(text))


def java_version(java: str) -> int | None:
    """The major version of a ``java`` launcher: from the JDK's ``release`` file when it
    has one (no JVM started), else from ``java -version``; ``None`` if neither says."""
    release = Path(java).resolve().parent.parent / "release"
    try:
        major = _major(_RELEASE.search(release.read_text(errors="replace")))
    except OSError:
        major = None
    if major is not None:
        return major
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(out.stderr + out.stdout)


def default_java() -> str | None:
    """``$JAVA_HOME/bin/java`` when ``JAVA_HOME`` is set, else ``java`` on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return candidate if candidate and Path(candidate).exists() else None


def _side_by_side(roots: Iterable[Path]) -> list[str]:
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for jdk in sorted(root.iterdir()):
            for java in (jdk / "bin" / "java", jdk / "Contents" / "Home" / "bin" / "java"):
                if java.is_file() and os.access(java, os.X_OK):
                    found.append(str(java))
    return found


def installed_javas(roots: Sequence[Path] = JDK_ROOTS) -> list[JavaInstall]:
    """Every Java on the machine in order of preference: the default one (``JAVA_HOME``
    or ``PATH``) first, then the side-by-side JDKs newest first; each launcher once."""
    seen: set[Path] = set()

    def install(java: str) -> JavaInstall | None:
        real = Path(java).resolve()
        if real in seen:
            return None
        seen.add(real)
        major = java_version(java)
        return None if major is None else JavaInstall(java, major)

    default = default_java()
    first = install(default) if default else None
    others = [found for java in _side_by_side(roots) if (found := install(java))]
    others.sort(key=lambda found: found.major, reverse=True)
    return ([first] if first else []) + others


def java_executable(minimum: int, what: str) -> str:
    """The default Java (``JAVA_HOME``, then ``PATH``) when it is ``minimum`` or newer;
    a ``StackError`` naming ``what`` needs it otherwise."""
    candidate = default_java()
    if candidate is None:
        raise StackError(
            f"Java {minimum}+ is required to run {what} but no `java` was found "
            "(install a JDK or set JAVA_HOME)"
        )
    major = java_version(candidate)
    if major is None:
        raise StackError(f"could not read the Java version from `{candidate} -version`")
    if major < minimum:
        raise StackError(
            f"{what} needs Java {minimum}+ but {candidate} is Java {major} "
            "(install a newer JDK or set JAVA_HOME)"
        )
    return candidate
