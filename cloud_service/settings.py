"""Settings of the cloud service: flags, `CLOUD_*` environment variables, or a `.env` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from splitcore.auth import empty_is_none
from splitcore.defaults import MIB, mib_bytes
from splitcore.tier_settings import TierSettings


class CloudSettings(TierSettings):
    """One object for every cloud setting; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_", env_file=".env", extra="ignore", frozen=True)

    port: int = Field(default=8001, description="TCP port to listen on")
    layers: str | None = Field(default=None,
        description="'A:B': keep only blocks [A, B) in memory; default: all blocks")
    max_weights_mb: float | None = Field(default=None,
        description="budget for block weights when an edge asks for more blocks; None: no limit")
    max_concurrent_steps: int | None = Field(default=None, ge=1,
        description="unbatched (ONNX Runtime) steps computed at once; default: one per core (torch steps batch)")
    batch_wait_ms: float = Field(default=250.0, ge=0,
        description="longest wait for the sessions of the last batch to send their next step before the next "
                    "batch runs without them (never longer than half that batch took)")
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
    body_timeout_s: float = Field(default=120.0, gt=0, description="longest time to receive a whole request body")
    ssl_ca_certs: Path | None = Field(default=None,
        description="with TLS: accept only edges with a client certificate signed by this CA")
    max_sessions_per_caller: int = Field(default=64,
        description="live sessions one edge (its token's name; its address on an open cloud) may hold; beyond: 429")

    ray: bool = Field(default=False,
        description="run the cloud as Ray Serve replicas behind Ray's HTTP proxy (needs `pip install .[ray]`)")
    ray_address: str | None = Field(default=None,
        description="with --ray: the Ray cluster to join ('auto', or host:port of `ray start --head`); default: "
                    "RAY_ADDRESS, else a one-node cluster started here and stopped on exit")
    replicas: int = Field(default=1, ge=1, description="with --ray: replicas of the cloud, each with all the settings")
    autoscale: str | None = Field(default=None, pattern=r"^\d+:\d+$",
        description="with --ray: 'MIN:MAX' replicas, scaled by Ray Serve to --sessions-per-replica (instead of "
                    "--replicas); a new replica takes new sessions, one scaled down has its sessions replayed")
    replica_cpus: float = Field(default=1.0, gt=0, description="with --ray: CPUs Ray reserves for each replica")
    replica_direct: bool = Field(default=True,
        description="with --ray: each replica also listens on a port of its own (on --host) and edges send a "
                    "session's frames after the first there, skipping Ray's proxy (about 10 ms per request)")
    sessions_per_replica: float = Field(default=16.0, gt=0,
        description="with --autoscale: live sessions (or queued steps) per replica Ray Serve scales to")

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
