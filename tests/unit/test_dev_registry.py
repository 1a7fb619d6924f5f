"""The local Schema Registry: which Java runs which Apicurio, fetching it once, readiness."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.dev import registry
from bridge.dev.java import (
    JavaInstall,
    installed_javas,
    java_executable,
    java_version,
    parse_java_version,
)
from bridge.dev.processes import Service
from bridge.dev.registry import (
    APICURIO,
    APICURIO_JAVA17,
    ApicurioRelease,
    SchemaRegistry,
    apicurio_home,
    choose_runtime,
    registry_environment,
    wait_registry,
)
from bridge.errors import StackError

# --- which Java, which Apicurio ------------------------------------------------------


def test_a_new_enough_default_java_runs_the_current_apicurio() -> None:
    default = JavaInstall("/opt/jdk21/bin/java", 21)
    newer = JavaInstall("/usr/lib/jvm/temurin-25/bin/java", 25)
    assert choose_runtime([default, newer]) == registry.RegistryRuntime(default, APICURIO)


def test_an_old_default_java_gives_way_to_a_newer_installed_jdk() -> None:
    default = JavaInstall("/usr/bin/java", 17)
    newer = JavaInstall("/usr/lib/jvm/temurin-25/bin/java", 25)
    runtime = choose_runtime([default, newer])
    assert runtime.java == newer
    assert runtime.release == APICURIO
    assert runtime.release.version == "3.3.3"


def test_java_17_alone_runs_the_older_apicurio() -> None:
    java17 = JavaInstall("/usr/bin/java", 17)
    runtime = choose_runtime([java17, JavaInstall("/usr/lib/jvm/jdk11/bin/java", 11)])
    assert runtime == registry.RegistryRuntime(java17, APICURIO_JAVA17)
    assert runtime.release.version == "3.0.9"
    assert runtime.release.launcher == "apicurio-registry-app-3.0.9-runner.jar"


@pytest.mark.parametrize(
    ("javas", "needle"),
    [
        ([], "Java found: none"),
        ([JavaInstall("/usr/bin/java", 11)], "/usr/bin/java (Java 11)"),
    ],
)
def test_no_usable_java_is_a_stack_error_naming_what_was_found(
    javas: list[JavaInstall], needle: str
) -> None:
    with pytest.raises(StackError, match=r"needs Java 17\+") as err:
        choose_runtime(javas)
    assert needle in err.value.message
    assert "--no-registry" in err.value.message


def test_coordinates_are_the_published_runnable_build() -> None:
    assert APICURIO.coordinates == "io.apicurio:apicurio-registry-app:3.3.3:tar.gz:all"
    assert APICURIO_JAVA17.coordinates == "io.apicurio:apicurio-registry-app:3.0.9:tar.gz:all"


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "25.0.3" 2026-04-21 LTS', 25),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", None),
    ],
)
def test_java_versions_are_read_from_the_launcher_output(text: str, major: int | None) -> None:
    assert parse_java_version(text) == major


def _jdk(root: Path, name: str, version: str | None, says: str = "") -> Path:
    """A fake JDK: a ``release`` file (unless ``version`` is None) and a ``bin/java`` script
    that prints ``says`` as ``java -version`` would."""
    home = root / name
    (home / "bin").mkdir(parents=True)
    if version is not None:
        (home / "release").write_text(f'IMPLEMENTOR="x"\nJAVA_VERSION="{version}"\n')
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{says}' >&2\n")
    java.chmod(0o755)
    return java


def test_installed_javas_put_the_default_first_then_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "jvm"
    java17 = _jdk(root, "java-17", "17.0.15")
    _jdk(root, "temurin-25", "25.0.3")
    _jdk(root, "jdk-21", None, says='openjdk version "21.0.2" 2024-01-16')
    (root / "java-1.17.0").symlink_to(root / "java-17")
    _jdk(root, "broken", None, says="not a java")
    monkeypatch.setenv("JAVA_HOME", str(java17.parent.parent))
    javas = installed_javas([root, tmp_path / "missing"])
    assert [(Path(j.java).parent.parent.name, j.major) for j in javas] == [
        ("java-17", 17),
        ("temurin-25", 25),
        ("jdk-21", 21),
    ]
    assert choose_runtime(javas).java.major == 25


def test_the_kafka_java_check_names_the_version_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _jdk(tmp_path, "jdk-11", "11.0.2")
    monkeypatch.setenv("JAVA_HOME", str(old.parent.parent))
    assert java_version(str(old)) == 11
    with pytest.raises(StackError, match=r"Kafka needs Java 17\+ but .* is Java 11"):
        java_executable(17, "Kafka")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(StackError, match="no `java` was found"):
        java_executable(17, "Kafka")


# --- fetching and unpacking once -----------------------------------------------------

FAKE = ApicurioRelease("9.9.9", 21, "quarkus-run.jar")


def _archive(path: Path, damaged: bool = False) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("quarkus-run.jar", b"jar"), ("lib/main/a.jar", b"a")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2] if damaged else data)
    return path


def test_the_build_is_unpacked_once_and_then_used_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []

    def download(release: ApicurioRelease) -> Path:
        fetched.append(release.version)
        return _archive(tmp_path / "app.tar.gz")

    monkeypatch.setattr(registry, "_download", download)
    cache = tmp_path / "cache"
    home = apicurio_home(FAKE, cache)
    assert home == cache / "apicurio-registry-9.9.9"
    assert (home / "quarkus-run.jar").read_bytes() == b"jar"
    assert (home / "lib" / "main" / "a.jar").is_file()
    assert apicurio_home(FAKE, cache) == home
    assert fetched == ["9.9.9"]
    # No half-unpacked directory is left beside it.
    assert sorted(p.name for p in cache.iterdir()) == [
        "apicurio-registry-9.9.9",
        "apicurio-registry-9.9.9.lock",
    ]


def test_a_damaged_download_is_fetched_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archives = [True, False]

    def download(release: ApicurioRelease) -> Path:
        return _archive(tmp_path / "app.tar.gz", damaged=archives.pop(0))

    monkeypatch.setattr(registry, "_download", download)
    home = apicurio_home(FAKE, tmp_path / "cache")
    assert (home / "quarkus-run.jar").is_file()
    assert archives == []


def test_a_download_that_stays_damaged_is_a_stack_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def download(release: ApicurioRelease) -> Path:
        return _archive(tmp_path / "app.tar.gz", damaged=True)

    monkeypatch.setattr(registry, "_download", download)
    with pytest.raises(StackError, match="cannot be unpacked"):
        apicurio_home(FAKE, tmp_path / "cache")
    assert not (tmp_path / "app.tar.gz").exists()
    assert not (tmp_path / "cache" / "apicurio-registry-9.9.9").exists()


def test_a_failed_download_is_a_stack_error_naming_the_artifact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Unreachable:
        cached_path = tmp_path / "partial.tar.gz"

        def resolve(self) -> Path:
            self.cached_path.write_bytes(b"half")
            raise OSError("connection refused")

    class Context:
        def project(self, group: str, artifact: str) -> Context:
            return self

        def at_version(self, version: str) -> Context:
            return self

        def artifact(self, classifier: str, packaging: str) -> Unreachable:
            assert (classifier, packaging) == ("all", "tar.gz")
            return Unreachable()

    monkeypatch.setattr("jgo.maven.MavenContext", Context)
    with pytest.raises(StackError, match=r"could not download Apicurio Registry 3\.3\.3") as err:
        registry._download(APICURIO)
    assert APICURIO.coordinates in err.value.message
    assert not (tmp_path / "partial.tar.gz").exists()


# --- settings of the process and readiness --------------------------------------------


def test_every_port_is_bound_to_loopback() -> None:
    env = registry_environment(8181, 40123)
    assert env["QUARKUS_HTTP_HOST"] == "127.0.0.1"
    assert env["QUARKUS_HTTP_PORT"] == "8181"
    assert env["QUARKUS_MANAGEMENT_HOST"] == "127.0.0.1"
    assert env["QUARKUS_MANAGEMENT_PORT"] == "40123"


def test_the_process_runs_the_chosen_release_on_its_java_inside_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    homes: list[ApicurioRelease] = []

    def home(release: ApicurioRelease, root: Path | None = None) -> Path:
        homes.append(release)
        return tmp_path / "cache" / release.version

    started: list[Service] = []
    monkeypatch.setattr(registry, "apicurio_home", home)
    monkeypatch.setattr(Service, "start", lambda self: started.append(self))
    java17 = JavaInstall("/usr/bin/java", 17)
    data = tmp_path / "registry"
    server = SchemaRegistry(data, 18181, management_port=18182, javas=[java17])
    server.start()
    assert homes == [APICURIO_JAVA17]
    (service,) = started
    assert service.args == [
        "/usr/bin/java",
        "-Xmx128m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        f"-Dvertx.cacheDirBase={data / 'vertx-cache'}",
        f"-Djava.io.tmpdir={data / 'tmp'}",
        "-jar",
        str(tmp_path / "cache" / "3.0.9" / "apicurio-registry-app-3.0.9-runner.jar"),
    ]
    assert service.cwd == data and service.log == data / "registry.log"
    assert service.env is not None
    assert service.env["QUARKUS_HTTP_PORT"] == "18181"
    assert service.env["QUARKUS_MANAGEMENT_PORT"] == "18182"
    assert server.url == "http://127.0.0.1:18181/apis/ccompat/v7"


def test_no_usable_java_fails_before_anything_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fetch(release: ApicurioRelease, root: Path | None = None) -> Path:
        raise AssertionError("nothing may be fetched without a Java to run it")

    monkeypatch.setattr(registry, "apicurio_home", fetch)
    server = SchemaRegistry(tmp_path, 18181, javas=[JavaInstall("/usr/bin/java", 11)])
    with pytest.raises(StackError, match="Java found: /usr/bin/java"):
        server.start()
    assert server.service is None


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b"[]"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serving(status: int) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/apis/ccompat/v7"
    finally:
        server.shutdown()
        server.server_close()


def test_a_registry_that_lists_subjects_is_ready() -> None:
    with _serving(200) as url:
        asyncio.run(wait_registry(url, 10))


def test_something_else_on_the_port_is_refused_at_once() -> None:
    with _serving(404) as url, pytest.raises(StackError, match=r"HTTP 404.*not a Confluent"):
        asyncio.run(wait_registry(url, 10))


def test_a_starting_registry_is_waited_for_through_http_errors() -> None:
    with _serving(503) as url, pytest.raises(StackError, match="did not answer within 1s"):
        asyncio.run(wait_registry(url, 1, starting=True))


def test_a_registry_that_never_answers_times_out_with_its_address() -> None:
    from bridge.dev.processes import free_port

    url = registry.registry_url(free_port())
    with pytest.raises(StackError, match=f"{url} did not answer within 1s"):
        asyncio.run(wait_registry(url, 1))


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert registry.cache_dir() == tmp_path / "ktb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert registry.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "ktb"
