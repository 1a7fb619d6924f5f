"""One settings model for every ktb process, read from ``KTB_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.concurrency import AUTO_MAXIMUM, AUTO_MINIMUM
from bridge.tenancy import valid_tenant

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration shared by the bridge, the API, workers and the CLI."""

    # Errors name the setting, never echo its value: values may carry secrets.
    model_config = SettingsConfigDict(env_prefix="KTB_", extra="ignore", hide_input_in_errors=True)

    kafka_bootstrap: str = "localhost:9092"
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_rpc_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of each Temporal call the bridge makes for an event"
    )

    schemas_dir: Path = REPO_ROOT / "schemas"
    routes_file: Path = REPO_ROOT / "routes.yaml"
    data_dir: Path = Path(".ktb")

    group_id: str = "ktb-bridge"
    # Records acted on at once, those waiting for a Temporal slot included; the number
    # of actions in Temporal at once is temporal_in_flight (bridge/concurrency.py).
    max_in_flight: int = Field(1024, ge=1, description="Records being acted on at once")
    temporal_in_flight: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Actions in Temporal at once: auto adapts it to Temporal's answer times "
        f"(between {AUTO_MINIMUM} and {AUTO_MAXIMUM}, neither above max_in_flight), a number "
        "fixes it (up to max_in_flight)",
    )
    max_buffered: int = Field(10000, ge=1, description="Records fetched but not done")
    # The consumer holds each partition's last fetch until every record in it is taken,
    # so this bounds memory beside max_buffered; a record larger than it is still fetched.
    fetch_partition_bytes: int = Field(
        256 * 1024, ge=1024, description="Most bytes fetched from one partition at a time"
    )
    commit_interval_s: float = Field(0.5, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(10.0, gt=0)
    connect_timeout_s: float = Field(
        300.0, gt=0, description="How long a process keeps trying to reach Temporal at start"
    )

    # The bridge's consumer group (bridge/consumer.py). A rebalance waits up to
    # rebalance_timeout_s for every member to rejoin; a member learns of it at its next
    # heartbeat and then finishes its revoked partitions within revoke_timeout_s, so a
    # member is never expelled for being slow to let go (the validator keeps both
    # well inside the rebalance timeout).
    session_timeout_s: float = Field(
        10.0, ge=1, description="A member without a heartbeat this long is dead to its group"
    )
    heartbeat_interval_s: float = Field(3.0, gt=0, description="Heartbeats to the group")
    rebalance_timeout_s: float = Field(
        60.0, gt=0, description="How long a rebalance waits for every member to rejoin"
    )
    revoke_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Longest a member takes to give up revoked partitions: in-flight "
        "actions finish or are abandoned, then the done prefix is committed",
    )
    commit_timeout_s: float = Field(
        5.0, gt=0, description="Longest a revoke or a shutdown waits for an offset commit"
    )
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        description="Static group membership (KIP-345): a name unique to this replica and "
        "stable across its restarts; a restart within session_timeout_s rebalances nothing",
    )

    @model_validator(mode="after")
    def _temporal_in_flight_within_max(self) -> Settings:
        fixed = self.temporal_in_flight
        if fixed != "auto" and fixed > self.max_in_flight:
            raise ValueError(
                f"temporal_in_flight ({fixed}) cannot exceed max_in_flight "
                f"({self.max_in_flight}): no more records than that are acted on at once"
            )
        return self

    @model_validator(mode="after")
    def _rebalance_budget(self) -> Settings:
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            raise ValueError(
                "heartbeat_interval_s must be at most a third of session_timeout_s "
                f"({self.heartbeat_interval_s} > {self.session_timeout_s} / 3)"
            )
        if self.heartbeat_interval_s + self.revoke_timeout_s > self.rebalance_timeout_s / 2:
            raise ValueError(
                "heartbeat_interval_s + revoke_timeout_s must be at most half of "
                f"rebalance_timeout_s ({self.heartbeat_interval_s} + {self.revoke_timeout_s} > "
                f"{self.rebalance_timeout_s} / 2): a member still giving up its partitions "
                "when the rebalance times out is expelled, and its rejoin starts another"
            )
        return self

    source: str = "ktb"
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    # Observability (bridge/telemetry.py, bridge/tracing.py)
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Serve Prometheus /metrics on this port; 0: off"
    )
    metrics_host: str = Field("127.0.0.1", description="Interface of the /metrics server")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces URL (http://collector:4318/v1/traces); unset: no tracing",
    )
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded (a sampled parent is followed)"
    )

    provenance_topic: str = Field(
        "ktb.provenance", description="Where bridges and workers record provenance"
    )
    provenance_linger_ms: int = Field(
        200,
        ge=0,
        le=5000,
        description="How long provenance items wait to be sent together, one record per "
        "partition (ms): longer costs less CPU per event and shows a handling later",
    )

    # HTTP API (`ktb api`)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    api_auth: bool = Field(True, description="Require bearer API keys; `KTB_API_AUTH=off` for dev")
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description='API key hashes to tenants: {"sha256:<hex of sha256(key)>": "tenant"}',
    )
    api_session_secret: SecretStr | None = Field(
        None,
        description="Signs console sessions; every replica behind one address needs the same "
        "(unset: a random one per process, so sessions end when it stops)",
    )
    api_session_ttl_s: float = Field(
        8 * 3600, gt=0, description="How long a console sign-in lasts (seconds)"
    )
    console_temporal_ui_url: str | None = Field(
        None,
        description="The Temporal UI the console links runs to, e.g. http://localhost:8233",
    )
    api_max_body_bytes: int = Field(1_048_576, ge=1, description="Larger request bodies get 413")
    api_topics: dict[str, str] = Field(
        default_factory=dict,
        description="Event type to topic for POST /events; default: the routes file's route",
    )
    api_wait_max_s: float = Field(60.0, gt=0, description="Upper bound of POST /events?wait=")
    api_query_timeout_s: float = Field(2.0, gt=0, description="Deadline of progress queries")
    api_stream_interval_s: float = Field(0.5, gt=0, description="Poll interval of SSE streams")
    api_stream_outage_s: float = Field(
        30.0, gt=0, description="How long an SSE stream waits out Temporal not answering"
    )
    api_indexer: bool = Field(
        True, description="Run the provenance indexer inside `ktb api` (off: `ktb indexer` runs it)"
    )

    # The read model of provenance in PostgreSQL (bridge/store): lookups, duplicate ids.
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/ktb"),
        description="PostgreSQL of the provenance read model (postgresql://user:pass@host/db)",
    )
    database_pool_size: int = Field(10, ge=1, description="Connections one process keeps at most")
    database_timeout_s: float = Field(
        5.0, gt=0, description="Deadline of connecting to and of each statement of the database"
    )
    provenance_retention_days: int = Field(
        30, ge=1, description="Days of provenance the database keeps (whole days dropped)"
    )
    indexer_group_id: str | None = Field(
        None, description="Consumer group of the indexer; default ktb-indexer.<provenance topic>"
    )
    indexer_batch: int = Field(
        5000, ge=1, le=100_000, description="Provenance records (of items) per transaction at most"
    )

    @property
    def indexer_group(self) -> str:
        """The indexer's consumer group: every indexer of one provenance topic shares it."""
        return self.indexer_group_id or f"ktb-indexer.{self.provenance_topic}"

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for digest, tenant in value.items():
            algo, _, hexdigest = digest.partition(":")
            if algo != "sha256" or len(hexdigest) != 64 or not _is_hex(hexdigest) or not tenant:
                raise ValueError(
                    "api_keys maps 'sha256:<64 hex digits>' to a tenant id "
                    "(`ktb api-key` prints one); raw keys are never configured"
                )
            if not valid_tenant(tenant):
                raise ValueError(
                    f"api_keys: tenant {tenant[:80]!r} is not a tenant id: 1-64 letters, "
                    "digits, '.', '_' or '-', starting with a letter or digit"
                )
        return value

    # Kafka security, applied to every producer, consumer and admin client (bridge/security.py).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="PEM CA bundle for the brokers")
    kafka_ssl_certfile: Path | None = Field(None, description="PEM client certificate (mTLS)")
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM client private key (mTLS)")
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_ssl_locations: list[Path] = Field(
        default_factory=list,
        description="Directories key/trust stores named in kafka_client_options may be read from",
    )
    kafka_client_options: dict[str, str] = Field(
        default_factory=dict,
        description='Extra Kafka client options by Kafka name, allowlisted: {"client.id": "x"}',
    )

    # Temporal connection security; the namespace above is the only namespace used.
    temporal_tls: bool | None = Field(
        None, description="Force TLS on/off; default: on when a TLS file or API key is set"
    )
    temporal_tls_ca: Path | None = Field(None, description="PEM CA of the Temporal frontend")
    temporal_tls_cert: Path | None = Field(None, description="PEM client certificate (mTLS)")
    temporal_tls_key: Path | None = Field(None, description="PEM client private key (mTLS)")
    temporal_tls_server_name: str | None = Field(None, description="TLS server name override")
    temporal_api_key: SecretStr | None = None
    temporal_grpc_compression: Literal["none", "gzip"] = Field(
        "none",
        description="Compression of the gRPC messages to and from Temporal: none (default) "
        "or gzip, for large payloads over a slow link",
    )
    temporal_runtime_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Worker threads of the Temporal SDK's core runtime, which carries a "
        "process's calls to Temporal; unset: one in a bridge (its Python thread is the "
        "busier one), one per core in every other process (tokio's own default)",
    )

    # Schema Registry (Confluent-compatible REST API), for records in its wire format.
    # Credentials are secrets: never logged, never in the URL.
    schema_registry_url: str | None = Field(
        None,
        description="Confluent-compatible base URL, e.g. "
        "http://127.0.0.1:8085/apis/ccompat/v7 (Apicurio); unset: no registry",
    )
    schema_registry_username: str | None = Field(None, description="Basic-auth user")
    schema_registry_password: SecretStr | None = Field(None, description="Basic-auth password")
    schema_registry_token: SecretStr | None = Field(None, description="Bearer token")
    schema_registry_ca_file: str | None = Field(None, description="PEM CA bundle of the registry")
    schema_registry_cert_file: str | None = Field(None, description="PEM client certificate (mTLS)")
    schema_registry_key_file: str | None = Field(None, description="PEM client private key (mTLS)")
    schema_registry_insecure: bool = Field(
        False,
        description="Allow credentials over plain http (a trusted network only, like "
        "Kafka's SASL_PLAINTEXT)",
    )

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"schema_registry_url must be an http:// or https:// URL with a host "
                f"(scheme {url.scheme[:20]!r})"
            )
        if url.username is not None or url.password is not None:
            raise ValueError(
                "schema_registry_url must not carry credentials; set "
                "KTB_SCHEMA_REGISTRY_USERNAME and KTB_SCHEMA_REGISTRY_PASSWORD "
                "(or KTB_SCHEMA_REGISTRY_TOKEN) instead"
            )
        if url.query or url.fragment:
            raise ValueError("schema_registry_url must have no query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _registry_security(self) -> Settings:
        user = self.schema_registry_username
        password = self.schema_registry_password
        basic = user is not None or password is not None
        token = self.schema_registry_token is not None
        tls = [
            name
            for name in ("ca_file", "cert_file", "key_file")
            if getattr(self, f"schema_registry_{name}") is not None
        ]
        if self.schema_registry_url is None:
            if basic or token or tls:
                raise ValueError(
                    "Schema Registry credentials or TLS files are set but "
                    "KTB_SCHEMA_REGISTRY_URL is not"
                )
            return self
        if basic and (not user or password is None or not password.get_secret_value()):
            raise ValueError(
                "Schema Registry basic auth needs both KTB_SCHEMA_REGISTRY_USERNAME and "
                "KTB_SCHEMA_REGISTRY_PASSWORD"
            )
        if basic and token:
            raise ValueError(
                "set either Schema Registry basic auth (KTB_SCHEMA_REGISTRY_USERNAME/_PASSWORD) "
                "or a bearer token (KTB_SCHEMA_REGISTRY_TOKEN), not both"
            )
        if (self.schema_registry_key_file is None) != (self.schema_registry_cert_file is None):
            raise ValueError(
                "Schema Registry mTLS needs both KTB_SCHEMA_REGISTRY_CERT_FILE and "
                "KTB_SCHEMA_REGISTRY_KEY_FILE"
            )
        plain = urlsplit(self.schema_registry_url).scheme == "http"
        if plain and tls:
            raise ValueError(
                "Schema Registry TLS files are set but KTB_SCHEMA_REGISTRY_URL is http://; "
                "use https://"
            )
        if plain and (basic or token) and not self.schema_registry_insecure:
            raise ValueError(
                "Schema Registry credentials would cross the network in the clear: use an "
                "https:// KTB_SCHEMA_REGISTRY_URL (or KTB_SCHEMA_REGISTRY_INSECURE=true on "
                "a trusted network)"
            )
        return self

    # Replays (`ktb replay`, POST /replays) and dead-letter redrive (`ktb dlq`).
    replay_task_queue: str = Field("ktb-replay", description="Task queue of replay workflows")
    replay_concurrency: int = Field(
        64, ge=1, description="Temporal actions a replay runs at once (10x as many records)"
    )
    replay_chunk: int = Field(2000, ge=1, description="Records a replay fetches at a time")
    replay_heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="A replay worker silent this long is presumed dead"
    )
    replay_progress_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often a running replay signals its progress to its workflow "
        "(each signal adds to the workflow's history: a day at 10 s is ~35k events)",
    )
    replay_timeout_s: float = Field(86400.0, gt=0, description="Longest a replay may run")
    replay_rate_limit: float = Field(
        0.0, ge=0, description="Records per second a replay may act on; 0: no limit"
    )
    dlq_max_redrives: int = Field(
        3, ge=1, description="Redrive refuses dead letters already redriven this often"
    )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
