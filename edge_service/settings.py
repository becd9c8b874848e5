"""Settings of the edge service: flags, `EDGE_*` environment variables, or a `.env` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitcore.auth import empty_is_none
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.plan import BackendName, CodecName, Tier


class EdgeSettings(BaseSettings):
    """One object for every edge setting; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", env_file=".env", extra="ignore", frozen=True)

    model_dir: Path = DEFAULT_MODEL_DIR  # local Hugging Face checkpoint directory (tokenizer, weights)
    cloud_url: str = "http://127.0.0.1:8001"  # base URL of the cloud service
    cut: str = "edge"  # plan: "A:B" (edge [0,A), cloud [A,B), edge [B,L)), "A" (= A:L), "edge", "cloud" or "auto"
    head: Tier = "edge"  # which tier runs the final norm, LM head and sampling (cloud needs B = L)
    codec: CodecName = "fp16"  # element type of activations on the wire
    zstd_level: int = 1  # zstandard level for activations (higher: smaller prefill frames, more CPU)
    allow_tokens_off_device: bool = False  # privacy: may token ids (cut A = 0, or head in the cloud) leave the device
    host: str = "127.0.0.1"  # address to listen on
    port: int = 8000  # TCP port to listen on
    threads: int | None = None  # torch intra-op threads; default: torch's choice (all cores)
    backend: BackendName = "torch"  # runtime of the edge's blocks unless the plan names one
    onnx_dir: Path | None = None  # cache of ONNX exports; default: ~/.cache/edgesplit/onnx
    onnx_quantize: bool = False  # onnxruntime on the edge: int8 weights (dynamic quantisation; see bench/backends.py)
    cloud_timeout_s: float = 30.0  # longest wait for one cloud step
    cloud_connect_timeout_s: float = 3.0  # longest wait to open a connection to the cloud
    max_prompt_tokens: int = 4096  # longest accepted prompt, tokens (also capped by the model's positions)
    max_output_tokens: int = 2048  # largest accepted max_tokens
    max_body_mb: float = 4.0  # largest accepted request body, MiB (a 4096-token prompt as JSON is far smaller)
    edge_profile: Path | None = None  # this device's measured profile for --plan auto; default: measure at start
    edge_memory_mb: float | None = None  # --plan auto: device memory budget for the model, MiB
    min_edge_layers: int = 1  # --plan auto: blocks [0, K) always stay on the device
    max_codec_loss: float | None = Field(default=None, ge=0.0)  # --plan auto: most perplexity ratio - 1 a codec adds
    plan_workload: str = "128:64"  # --plan auto: PROMPT:OUTPUT[:STREAMS], a typical request and how many at once
    plan_seed: int = 0  # --plan auto: seed of the search
    probe_interval_s: float = 2.0  # probe the link when no request has crossed it for this long (sized to ~50 ms)
    adaptive: bool = True  # with --plan auto: re-plan on its own when the link estimate moves
    replan_interval_s: float = 1.0  # how often the link estimate is checked against the plan's
    replan_threshold: float = Field(default=1.5, gt=1.0)  # factor by which bandwidth or RTT must move to re-plan
    replan_rtt_floor_ms: float = 3.0  # RTT moves smaller than this never count (loopback jitter)
    replan_confirmations: int = Field(default=2, ge=1)  # consecutive checks the move must last
    replan_min_gain: float = Field(default=0.1, ge=0.0, lt=1.0)  # switch only if predicted this fraction faster
    emulate_slowdown: float = Field(default=1.0, ge=1.0)  # emulate a one-core device N x slower: compute takes turns
    admin_token: SecretStr | None = None  # bearer token of /admin/*; unset: the admin API answers 403
    cloud_token: SecretStr | None = None  # bearer token the cloud requires (its CLOUD_AUTH_TOKEN)
    cloud_ca_file: Path | None = None  # CA bundle to verify an https cloud with; default: the system's
    cloud_client_cert: Path | None = None  # PEM certificate for mutual TLS with the cloud
    cloud_client_key: Path | None = None  # its private key
    ssl_certfile: Path | None = None  # serve the public API over TLS with this PEM certificate
    ssl_keyfile: Path | None = None  # and this private key
    fallback: bool = True  # finish a generation on the edge alone when the cloud fails mid-request
    cloud_step_timeout_s: float = 5.0  # longest wait for one decode step before the cloud counts as stalled
    max_concurrent_requests: int = Field(default=32, ge=1)  # generations at once; beyond: 429 with Retry-After
    max_concurrent_steps: int | None = Field(default=None, ge=1)  # of those, computing at once; default: one per core
    log_level: str = "info"  # logging level

    _no_empty_tokens = field_validator("admin_token", "cloud_token", mode="before")(empty_is_none)
