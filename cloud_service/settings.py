"""Settings of the cloud service: flags, `CLOUD_*` environment variables, or a `.env` file."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from splitcore.defaults import DEFAULT_MODEL_DIR


class CloudSettings(BaseSettings):
    """One object for every cloud setting; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_", env_file=".env", extra="ignore", frozen=True)

    model_dir: Path = DEFAULT_MODEL_DIR  # local Hugging Face checkpoint directory
    host: str = "127.0.0.1"  # address to listen on
    port: int = 8001  # TCP port to listen on
    layers: str | None = None  # "A:B": keep only blocks [A, B) in memory; default: all blocks
    max_weights_mb: float | None = None  # budget for block weights when an edge asks for more blocks; None: no limit
    threads: int | None = None  # torch intra-op threads; default: torch's choice (all cores)
    session_ttl_s: float = 300.0  # a session idle this long is dropped with its KV cache
    max_sessions: int = 256  # sessions held at once; least recently used idle ones are evicted beyond it
    max_cache_mb: float = 4096.0  # KV cache memory cap over all sessions, MiB
    max_frame_mb: float = 64.0  # largest accepted request body, MiB
    profile: Path | None = None  # measured profile JSON to serve at GET /profile; default: measure on first request
    log_level: str = "info"  # logging level
