"""Settings of the cloud service: flags, `CLOUD_*` environment variables, or a `.env` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitcore.auth import empty_is_none
from splitcore.defaults import DEFAULT_MODEL_DIR, MIB, mib_bytes
from splitcore.plan import BackendName


class CloudSettings(BaseSettings):
    """One object for every cloud setting; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_", env_file=".env", extra="ignore", frozen=True)

    model_dir: Path = Field(default=DEFAULT_MODEL_DIR,
        description="local Hugging Face checkpoint directory", json_schema_extra={"flags": ["--model"]})
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8001, description="TCP port to listen on")
    layers: str | None = Field(default=None,
        description="'A:B': keep only blocks [A, B) in memory; default: all blocks")
    max_weights_mb: float | None = Field(default=None,
        description="budget for block weights when an edge asks for more blocks; None: no limit")
    threads: int | None = Field(default=None, description="torch intra-op threads; default: torch's choice (all cores)")
    backend: BackendName = Field(default="torch", description="runtime of the blocks unless an edge's plan names one")
    onnx_dir: Path | None = Field(default=None, description="cache of ONNX exports; default: ~/.cache/edgesplit/onnx")
    max_concurrent_steps: int | None = Field(default=None, ge=1,
        description="steps computed at once; default: one per core")
    session_ttl_s: float = Field(default=300.0, description="a session idle this long is dropped with its KV cache")
    max_sessions: int = Field(default=256,
        description="sessions held at once; least recently used idle ones are evicted beyond it")
    max_cache_mb: float = Field(default=4096.0, description="KV cache memory cap over all sessions, MiB")
    max_frame_mb: float = Field(default=64.0, description="largest accepted request body, MiB")
    profile: Path | None = Field(default=None,
        description="measured profile JSON to serve at GET /profile; default: measure on first request")
    auth_token: SecretStr | None = Field(default=None,
        description="bearer token every edge shares (the edge named 'edge'); unset, and no edge_tokens: open")
    edge_tokens: SecretStr | None = Field(default=None,
        description="a token per edge, 'name=token,name=token': each session belongs to the edge that opened it")
    header_timeout_s: float = Field(default=10.0, gt=0,
        description="a request's headers must arrive within this long, or the connection is closed")
    body_idle_timeout_s: float = Field(default=10.0, gt=0,
        description="longest wait for the next piece of a request body; then 408")
    body_timeout_s: float = Field(default=120.0, gt=0, description="longest time to receive a whole request body")
    ssl_certfile: Path | None = Field(default=None, description="serve over TLS with this PEM certificate")
    ssl_keyfile: Path | None = Field(default=None, description="and this private key")
    ssl_ca_certs: Path | None = Field(default=None,
        description="with TLS: accept only edges with a client certificate signed by this CA")
    max_sessions_per_caller: int = Field(default=64,
        description="live sessions one edge (its token's name; its address on an open cloud) may hold; beyond: 429")
    log_level: str = Field(default="info", description="logging level")

    _no_empty_token = field_validator("auth_token", "edge_tokens", mode="before")(empty_is_none)

    @property
    def max_cache_bytes(self) -> int:
        return int(self.max_cache_mb * MIB)

    @property
    def max_frame_bytes(self) -> int:
        return int(self.max_frame_mb * MIB)

    @property
    def max_weights_bytes(self) -> int | None:
        return mib_bytes(self.max_weights_mb)
