"""One settings model for every ktb process, read from ``KTB_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration shared by the bridge, the API, workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="KTB_", extra="ignore")

    kafka_bootstrap: str = "localhost:9092"
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"

    schemas_dir: Path = REPO_ROOT / "schemas"
    routes_file: Path = REPO_ROOT / "routes.yaml"
    data_dir: Path = Path(".ktb")

    group_id: str = "ktb-bridge"
    max_in_flight: int = Field(1000, ge=1, description="Records being acted on at once")
    max_buffered: int = Field(10000, ge=1, description="Records fetched but not done")
    commit_interval_s: float = Field(0.5, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(10.0, gt=0)

    source: str = "ktb"
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
