"""Apicurio Registry for the local stack: a real Confluent-compatible Schema Registry.

The published runnable build (``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``)
comes from Maven Central through jgo, like the Kafka jars, and is extracted once under
the user's cache directory. Storage is in memory (Apicurio's default, H2). Apicurio
3.3 needs Java 21+: ``JAVA_HOME`` (or ``java`` on ``PATH``) when it is new enough, else
the newest JDK installed side by side, else Apicurio 3.0.9, which runs on Java 17.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridge.dev.java import JavaInstall, installed_javas
from bridge.dev.processes import Service, free_port, tail
from bridge.errors import StackError

REGISTRY_PORT = 8181
CCOMPAT_PATH = "/apis/ccompat/v7"
APICURIO_GROUP = "io.apicurio"
APICURIO_ARTIFACT = "apicurio-registry-app"
# Small and quick to start: the registry of a development stack holds a few schemas.
JVM_OPTIONS = ("-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


@dataclass(frozen=True)
class ApicurioRelease:
    """A runnable Apicurio build: its version, the Java it needs and the jar that starts it."""

    version: str
    min_java: int
    launcher: str

    @property
    def coordinates(self) -> str:
        """Its Maven coordinates (group:artifact:version:packaging:classifier)."""
        return f"{APICURIO_GROUP}:{APICURIO_ARTIFACT}:{self.version}:tar.gz:all"


APICURIO = ApicurioRelease("3.3.3", 21, "quarkus-run.jar")
APICURIO_JAVA17 = ApicurioRelease("3.0.9", 17, "apicurio-registry-app-3.0.9-runner.jar")
# In order of preference.
RELEASES = (APICURIO, APICURIO_JAVA17)


@dataclass(frozen=True)
class RegistryRuntime:
    """The Apicurio release to run and the Java to run it on."""

    java: JavaInstall
    release: ApicurioRelease


def choose_runtime(
    javas: Sequence[JavaInstall], releases: Sequence[ApicurioRelease] = RELEASES
) -> RegistryRuntime:
    """The first release (in ``releases`` order) that one of ``javas`` can run, on the
    first such Java (``javas`` in order of preference: the default Java first)."""
    for release in releases:
        for java in javas:
            if java.major >= release.min_java:
                return RegistryRuntime(java, release)
    found = ", ".join(f"{j.java} (Java {j.major})" for j in javas) or "none"
    oldest = min(r.min_java for r in releases)
    raise StackError(
        f"the Schema Registry (Apicurio) needs Java {oldest}+ (Java "
        f"{releases[0].min_java}+ for Apicurio {releases[0].version}); Java found: {found}. "
        "Install a JDK or set JAVA_HOME, or start `ktb dev --no-registry`"
    )


def cache_dir() -> Path:
    """Where extracted Apicurio builds live (``$XDG_CACHE_HOME/ktb``, else ``~/.cache/ktb``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ktb"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (two stacks starting at once fetch once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(release: ApicurioRelease) -> Path:
    """The release archive in the local Maven repository, downloaded on first use."""
    from jgo.maven import MavenContext

    artifact = (
        MavenContext()
        .project(APICURIO_GROUP, APICURIO_ARTIFACT)
        .at_version(release.version)
        .artifact(classifier="all", packaging="tar.gz")
    )
    try:
        return artifact.resolve()
    except Exception as exc:  # jgo raises plain exceptions for network and HTTP problems
        if artifact.cached_path is not None:
            artifact.cached_path.unlink(missing_ok=True)
        raise StackError(
            f"could not download Apicurio Registry {release.version} "
            f"({release.coordinates}) from Maven Central: {exc}"
        ) from exc


def _extract(archive: Path, target: Path, release: ApicurioRelease) -> None:
    """Unpack ``archive`` into ``target`` through a temporary sibling, so a ``target``
    that exists is always complete."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(work, filter="data")
        if not (work / release.launcher).is_file():
            raise StackError(f"{archive} has no {release.launcher}")
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apicurio_home(release: ApicurioRelease, root: Path | None = None) -> Path:
    """The extracted build of ``release`` under ``root`` (default: ``cache_dir()``),
    downloaded and extracted on first use; later calls touch no network."""
    root = root or cache_dir()
    home = root / f"apicurio-registry-{release.version}"
    if (home / release.launcher).is_file():
        return home
    with _locked(root / f"apicurio-registry-{release.version}.lock"):
        if (home / release.launcher).is_file():
            return home
        for attempt in (1, 2):
            archive = _download(release)
            try:
                _extract(archive, home, release)
                break
            except (tarfile.TarError, EOFError, OSError) as exc:
                # A download cut short earlier: fetch it once more.
                archive.unlink(missing_ok=True)
                if attempt == 2:
                    raise StackError(
                        f"the Apicurio Registry {release.version} archive from Maven Central "
                        f"cannot be unpacked into {home}: {exc}"
                    ) from exc
    return home


def registry_environment(port: int, management_port: int) -> dict[str, str]:
    """Apicurio's settings for a local development registry on 127.0.0.1."""
    return {
        "QUARKUS_HTTP_HOST": "127.0.0.1",
        "QUARKUS_HTTP_PORT": str(port),
        # Otherwise the management interface takes 0.0.0.0:9000.
        "QUARKUS_MANAGEMENT_HOST": "127.0.0.1",
        "QUARKUS_MANAGEMENT_PORT": str(management_port),
        "QUARKUS_HTTP_ACCESS_LOG_ENABLED": "false",
        "APICURIO_STORAGE_KIND": "sql",
        "APICURIO_STORAGE_SQL_KIND": "h2",
        # A development registry: subjects and versions may be deleted to start over.
        "APICURIO_REST_DELETION_ARTIFACT_ENABLED": "true",
        "APICURIO_REST_DELETION_ARTIFACT_VERSION_ENABLED": "true",
        "APICURIO_REST_DELETION_GROUP_ENABLED": "true",
    }


@dataclass
class SchemaRegistry:
    """Apicurio Registry on ``127.0.0.1:port`` with in-memory storage; its log, Vert.x
    cache and temporary files under ``data_dir``."""

    data_dir: Path
    port: int = REGISTRY_PORT
    management_port: int | None = None
    javas: Sequence[JavaInstall] | None = None
    service: Service | None = field(default=None, init=False)
    runtime: RegistryRuntime | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The Confluent-compatible API (``KTB_SCHEMA_REGISTRY_URL``)."""
        return registry_url(self.port)

    def start(self) -> None:
        """Pick a Java and a release, fetch it on first use, start it."""
        self.runtime = choose_runtime(installed_javas() if self.javas is None else self.javas)
        home = apicurio_home(self.runtime.release)
        tmp = self.data_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        args = [
            self.runtime.java.java,
            *JVM_OPTIONS,
            f"-Dvertx.cacheDirBase={self.data_dir / 'vertx-cache'}",
            f"-Djava.io.tmpdir={tmp}",
            "-jar",
            str(home / self.runtime.release.launcher),
        ]
        env = {**os.environ, **registry_environment(self.port, self.management_port or free_port())}
        # Quarkus reads a `.env` file in its working directory as configuration: the
        # data directory has none, a project directory may (docker compose's).
        log = self.data_dir / "registry.log"
        self.service = Service("registry", args, log, env, cwd=self.data_dir)
        self.service.start()

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the Confluent-compatible API answers; error with the log tail otherwise."""
        await wait_registry(self.url, timeout, self.service)


def registry_url(port: int, host: str = "127.0.0.1") -> str:
    """The Confluent-compatible API of an Apicurio Registry on ``host:port``."""
    return f"http://{host}:{port}{CCOMPAT_PATH}"


def _subjects(url: str) -> None:
    with urllib.request.urlopen(f"{url}/subjects", timeout=3) as response:
        response.read()


async def wait_registry(
    url: str, timeout: float, service: Service | None = None, starting: bool = False
) -> None:
    """Poll ``GET <url>/subjects`` until it answers 200 or ``timeout`` passes.

    An HTTP error from a registry that is neither ``service`` nor ``starting`` (one
    already running) ends the wait at once: another kind of server holds the port.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if service is not None and not service.alive():
            raise StackError(f"the Schema Registry exited during start-up:\n{tail(service.log)}")
        try:
            await asyncio.to_thread(_subjects, url)
            return
        except urllib.error.HTTPError as exc:
            if service is None and not starting:
                # Something else answers on the port: waiting will not make it a registry.
                raise StackError(
                    f"{url}/subjects answered HTTP {exc.code}: the service on that port "
                    "is not a Confluent-compatible Schema Registry"
                ) from exc
            last = exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.3)
    log = tail(service.log) if service else ""
    raise StackError(
        f"the Schema Registry at {url} did not answer within {timeout:.0f}s ({last})\n{log}"
    )
