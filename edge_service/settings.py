"""Settings of the edge service: flags, `EDGE_*` environment variables, or a `.env` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from splitcore.auth import empty_is_none
from splitcore.defaults import DEFAULT_DRAFT_DIR, DEFAULT_MODEL_DIR, MIB, mib_bytes
from splitcore.plan import CodecName, Tier
from splitcore.tier_settings import TierSettings

SPECULATE_PATTERN = r"^(off|auto|[0-9]|1[0-6])$"  # --speculate: off, auto or a depth (0 is off)


class EdgeSettings(TierSettings):
    """One object for every edge setting; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", env_file=".env", extra="ignore", frozen=True)

    cloud_url: str = Field(default="http://127.0.0.1:8001",
        description="base URL of the cloud service", json_schema_extra={"flags": ["--cloud"]})
    cut: str = Field(default="edge",
        description="plan: 'A:B' (edge [0,A), cloud [A,B), edge [B,L)), 'A' (= A:L), 'edge', 'cloud' or 'auto' "
                    "(search one at start)",
        json_schema_extra={"flags": ["--cut", "--plan"]})
    head: Tier = Field(default="edge",
        description="which tier runs the final norm, LM head and sampling (cloud needs B = L)")
    codec: CodecName = Field(default="fp16", description="element type of activations on the wire")
    zstd_level: int = Field(default=1,
        description="zstandard level for activations (higher: smaller prefill frames, more CPU)")
    allow_tokens_off_device: bool = Field(default=False,
        description="privacy: may token ids (cut A = 0, or head in the cloud) leave the device")
    port: int = Field(default=8000, description="TCP port to listen on")
    onnx_quantize: bool = Field(default=False,
        description="onnxruntime on the edge: int8 weights (dynamic quantisation; see bench/backends.py)")
    cloud_timeout_s: float = Field(default=30.0, description="longest wait for one cloud step")
    cloud_connect_timeout_s: float = Field(default=3.0, description="longest wait to open a connection to the cloud")
    cloud_transport: Literal["websocket", "http"] = Field(default="websocket",
        description="how frames reach the cloud: one WebSocket per edge (HTTP where its handshake is refused) or "
                    "one POST per step")
    max_prompt_tokens: int = Field(default=4096,
        description="longest accepted prompt, tokens (also capped by the model's positions)")
    max_prompt_bytes: int = Field(default=65536, ge=1,
        description="longest text prompt (all chat messages together), UTF-8 bytes, refused before tokenising")
    body_timeout_s: float = Field(default=60.0, gt=0, description="longest time to receive a whole request body")
    max_output_tokens: int = Field(default=2048, description="largest accepted max_tokens")
    max_body_mb: float = Field(default=4.0,
        description="largest accepted request body, MiB (a 4096-token prompt as JSON is far smaller)")
    edge_profile: Path | None = Field(default=None,
        description="this device's measured profile for --plan auto; default: measure at start")
    edge_memory_mb: float | None = Field(default=None,
        description="--plan auto: device memory budget for the model, MiB")
    min_edge_layers: int = Field(default=1, description="--plan auto: blocks [0, K) always stay on the device")
    max_codec_loss: float | None = Field(default=None, ge=0.0,
        description="--plan auto: most perplexity ratio - 1 a codec adds")
    plan_workload: str = Field(default="128:64",
        description="--plan auto: PROMPT:OUTPUT[:STREAMS], a typical request and how many at once",
        json_schema_extra={"flags": ["--workload"]})
    plan_seed: int = Field(default=0, description="--plan auto: seed of the search")
    probe_interval_s: float = Field(default=2.0, gt=0,
        description="--plan auto: probe the link when no request has crossed it for this long (sized to ~50 ms); "
                    "a static plan never probes")
    probe_max_interval_s: float = Field(default=600.0, gt=0,
        description="--plan auto: while idle, the wait between probes doubles up to this")
    probe_budget_bytes_per_s: float = Field(default=2048.0, gt=0,
        description="--plan auto: idle probes average at most this many bytes per second")
    adaptive: bool = Field(default=True,
        description="with --plan auto: re-plan on its own when the link estimate moves")
    replan_interval_s: float = Field(default=1.0,
        description="how often the link estimate is checked against the plan's")
    replan_threshold: float = Field(default=1.5, gt=1.0,
        description="factor by which bandwidth or RTT must move to re-plan")
    replan_rtt_floor_ms: float = Field(default=3.0,
        description="RTT moves smaller than this never count (loopback jitter)")
    replan_confirmations: int = Field(default=2, ge=1, description="consecutive checks the move must last")
    replan_min_gain: float = Field(default=0.1, ge=0.0, lt=1.0,
        description="switch only if predicted this fraction faster")
    speculate: str = Field(default="auto", pattern=SPECULATE_PATTERN,
        description="drafts per round trip: off, auto (what measured acceptance, draft and round times favour; "
                    "none when speculation does not pay) or 1-16; the edge drafts and the cloud verifies all of "
                    "them in one exchange")
    speculate_max_streams: int = Field(default=2, ge=0,
        description="auto drafts only while at most this many generations run on the edge (0: no limit); beyond, "
                    "the edge's compute is worth more to its other streams' batched plain steps than to drafts "
                    "(edgesplit loadtest on loopback, auto against off: 8 streams 0.77x the tokens/s, 4 streams "
                    "0.79x-1.44x over three runs, 2 streams 1.00x-1.23x)")
    draft_model: str | None = Field(default=None,
        description="what drafts: a small checkpoint directory with the same tokenizer, or 'self' (the edge's own "
                    "blocks, the cloud's middle skipped); default: the shipped draft (models/draft) with the "
                    "shipped model, else self")

    def draft_dir(self) -> Path | None:
        """The draft model's checkpoint, or None when the edge's own blocks draft."""
        if self.draft_model == "self":
            return None
        if self.draft_model is not None:
            return Path(self.draft_model)
        shipped = self.model_dir.resolve() == DEFAULT_MODEL_DIR.resolve()
        return DEFAULT_DRAFT_DIR if shipped and (DEFAULT_DRAFT_DIR / "config.json").is_file() else None
    emulate_slowdown: float = Field(default=1.0, ge=1.0,
        description="emulate a one-core device N x slower: compute takes turns")
    admin_token: SecretStr | None = Field(default=None,
        description="bearer token of /admin/*; unset: the admin API answers 403")
    admin_session_s: float = Field(default=8 * 3600, gt=0,
        description="how long a dashboard sign-in lasts before the token is asked for again, seconds")
    cloud_token: SecretStr | None = Field(default=None,
        description="bearer token the cloud requires (its CLOUD_AUTH_TOKEN)")
    cloud_ca_file: Path | None = Field(default=None,
        description="CA bundle to verify an https cloud with; default: the system's")
    cloud_client_cert: Path | None = Field(default=None, description="PEM certificate for mutual TLS with the cloud")
    cloud_client_key: Path | None = Field(default=None, description="its private key")
    fallback: bool = Field(default=True,
        description="finish a generation on the edge alone when the cloud fails mid-request")
    cloud_step_timeout_s: float = Field(default=5.0,
        description="longest wait for one decode step before the cloud counts as stalled")
    max_concurrent_requests: int = Field(default=32, ge=1,
        description="generations at once; beyond: 429 with Retry-After")
    max_concurrent_steps: int | None = Field(default=None, ge=1,
        description="unbatched (ONNX Runtime) steps computed at once; default: one per core (torch steps batch)")

    _no_empty_tokens = field_validator("admin_token", "cloud_token", mode="before")(empty_is_none)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    @property
    def edge_memory_bytes(self) -> int | None:
        return mib_bytes(self.edge_memory_mb)
