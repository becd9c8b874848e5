"""Settings of the cloud service: flags, `CLOUD_*` environment variables, or a `.env` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitcore.auth import empty_is_none
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.plan import BackendName


class CloudSettings(BaseSettings):
    """One object for every cloud setting; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_", env_file=".env", extra="ignore", frozen=True)

    model_dir: Path = DEFAULT_MODEL_DIR  # local Hugging Face checkpoint directory
    host: str = "127.0.0.1"  # address to listen on
    port: int = 8001  # TCP port to listen on
    layers: str | None = None  # "A:B": keep only blocks [A, B) in memory; default: all blocks
    max_weights_mb: float | None = None  # budget for block weights when an edge asks for more blocks; None: no limit
    threads: int | None = None  # torch intra-op threads; default: torch's choice (all cores)
    backend: BackendName = "torch"  # runtime of the blocks unless an edge's plan names one
    onnx_dir: Path | None = None  # cache of ONNX exports; default: ~/.cache/edgesplit/onnx
    max_concurrent_steps: int | None = Field(default=None, ge=1)  # steps computed at once; default: one per core
    session_ttl_s: float = 300.0  # a session idle this long is dropped with its KV cache
    max_sessions: int = 256  # sessions held at once; least recently used idle ones are evicted beyond it
    max_cache_mb: float = 4096.0  # KV cache memory cap over all sessions, MiB
    max_frame_mb: float = 64.0  # largest accepted request body, MiB
    profile: Path | None = None  # measured profile JSON to serve at GET /profile; default: measure on first request
    auth_token: SecretStr | None = None  # bearer token edges must send to /v1/* and /profile; unset: open
    ssl_certfile: Path | None = None  # serve over TLS with this PEM certificate
    ssl_keyfile: Path | None = None  # and this private key
    ssl_ca_certs: Path | None = None  # with TLS: accept only edges with a client certificate signed by this CA
    max_sessions_per_caller: int = 64  # live sessions one edge (client address) may hold; beyond: 429
    log_level: str = "info"  # logging level

    _no_empty_token = field_validator("auth_token", mode="before")(empty_is_none)
