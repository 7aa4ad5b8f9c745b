"""Settings for each process, read from FERRUM_INFER_* environment variables and config.toml.

Precedence (highest first): explicit values (CLI flags), environment, the TOML file
(`FERRUM_INFER_CONFIG`, default ./config.toml when present). TOML sections (`[server]`, `[model]`,
`[cache]`, ...) only group keys for people; a key means the same in any section. Each process gets
its own settings class holding just the keys it uses.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FERRUM_INFER_"
DEFAULT_SCHEDULER_ADDR = "127.0.0.1:50051"


class FlatTomlSource(PydanticBaseSettingsSource):
    """Reads config.toml, flattening its sections into one namespace of keys."""

    def __init__(self, settings_cls: type[BaseSettings]):
        super().__init__(settings_cls)
        self._values = self._load()

    @staticmethod
    def _load() -> dict[str, Any]:
        explicit = os.environ.get(ENV_PREFIX + "CONFIG")
        path = Path(explicit) if explicit else Path("config.toml")
        if not path.is_file():
            if explicit:
                raise FileNotFoundError(f"{ENV_PREFIX}CONFIG points at {path}, which does not exist")
            return {}
        with path.open("rb") as f:
            data = tomllib.load(f)
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                flat.update({k.lower(): v for k, v in value.items()})
            else:
                flat[key.lower()] = value
        return flat

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the base class
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k in self.settings_cls.model_fields}


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings, FlatTomlSource(settings_cls))


class GatewaySettings(_Settings):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    scheduler_addr: str = DEFAULT_SCHEDULER_ADDR
    api_key: SecretStr | None = None
    # Comma-separated extra keys, for key rotation; each is accepted like api_key.
    api_keys: SecretStr | None = None
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(600.0, gt=0)
    max_concurrent_streams: int = Field(1024, ge=1)

    def accepted_keys(self) -> list[str]:
        keys = [self.api_key.get_secret_value()] if self.api_key else []
        if self.api_keys:
            keys += [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]
        return keys


class SchedulerSettings(_Settings):
    # The address the scheduler listens on (workers and gateways dial the same variable).
    scheduler_addr: str = DEFAULT_SCHEDULER_ADDR
    metrics_port: int = Field(9100, ge=0, le=65535)
    redis_url: str | None = None
    max_queue: int = Field(1024, ge=1)
    routing_policy: Literal["cache_aware", "least_loaded", "round_robin"] = "cache_aware"
    index_sweep_interval_s: float = Field(30.0, gt=0)  # how often dead workers' index entries are removed
    max_queue_per_model: int = Field(1024, ge=1)
    # How long a request waits for a worker of its model to appear before failing with 503.
    worker_wait_s: float = Field(30.0, ge=0)
    # On SIGTERM: how long in-flight requests may finish before the scheduler exits.
    drain_grace_s: float = Field(30.0, ge=0)


class WorkerSettings(_Settings):
    scheduler_addr: str = DEFAULT_SCHEDULER_ADDR
    model_path: str = "models/ferrum-demo"
    model_name: str | None = None
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_sequence_length: int | None = Field(None, ge=16)
    max_num_seqs: int = Field(64, ge=1)
    max_num_batched_tokens: int = Field(2048, ge=16)
    cache_enabled: bool = True
    cache_size_mb: int = Field(512, ge=1)
    block_size: int = Field(16, ge=1, le=1024)
    eviction_policy: Literal["lru", "lfu", "fifo"] = "lru"
    # The compiled CPU kernels (AVX-512 or AVX2 set) that `make kernels` built; false: torch's operations.
    cpu_kernels: bool = True
    # CPU linears compute on weights pre-packed once for oneDNN; false: torch's F.linear each call.
    packed_weights: bool = True
    metrics_port: int = Field(9200, ge=0, le=65535)
    redis_url: str | None = None
    worker_id: str | None = None
    # On SIGTERM: how long running requests may finish before the rest is handed back.
    drain_grace_s: float = Field(30.0, ge=0)

    def served_model_name(self) -> str:
        """The model's public name: FERRUM_INFER_MODEL_NAME, else the directory's (or hub id's) last part."""
        return self.model_name or Path(self.model_path.rstrip("/")).name
