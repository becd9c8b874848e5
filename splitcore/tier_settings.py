"""What every tier's settings share: the checkpoint, where it listens, how it computes, TLS, slow-client bounds.

`EdgeSettings` and `CloudSettings` add their own fields and their `EDGE_` / `CLOUD_` environment prefix; each
field here is one flag of either `serve` command (`edgesplit.flags`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings

from splitcore.batching import BatchLimits
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.logs import LogFormat
from splitcore.plan import BackendName

if TYPE_CHECKING:
    from splitcore.loading import LoadedModel


class TierSettings(BaseSettings):
    """The fields both tiers' settings have, with the same meaning."""

    model_dir: Path = Field(default=DEFAULT_MODEL_DIR,
        description="local Hugging Face checkpoint directory (weights, config; the edge's tokenizer)",
        json_schema_extra={"flags": ["--model"]})
    served_model_name: str | None = Field(default=None, max_length=256,
        description="the model's name in the API (/v1/models, requests' model) and metrics; default: the "
                    "checkpoint's (its directory, or the hub id)")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    threads: int | None = Field(default=None, description="torch intra-op threads; default: torch's choice (all cores)")
    backend: BackendName = Field(default="torch",
        description="runtime of this tier's blocks unless a plan names one")
    onnx_dir: Path | None = Field(default=None, description="cache of ONNX exports; default: ~/.cache/edgesplit/onnx")
    ssl_certfile: Path | None = Field(default=None,
        description="serve this tier's API over TLS with this PEM certificate")
    ssl_keyfile: Path | None = Field(default=None, description="and this private key")
    header_timeout_s: float = Field(default=10.0, gt=0,
        description="a request's headers must arrive within this long, or the connection is closed")
    body_idle_timeout_s: float = Field(default=10.0, gt=0,
        description="longest wait for the next piece of a request body; then 408")
    log_level: str = Field(default="info", description="logging level")
    log_format: LogFormat = Field(default="plain", description="log lines as plain text or JSON objects")
    log_refused_bodies: bool = Field(default=False,
        description="debug: a request refused as invalid logs its body too (prompt text included)")
    max_batch: int = Field(default=64, ge=1, description="sessions whose steps run in one batched forward, at most")
    max_batch_tokens: int = Field(default=1024, ge=1,
        description="positions in one batched forward, at most (a decode step counts one)")
    prefill_chunk: int = Field(default=256, ge=1,
        description="a prompt runs at most this many positions per batch, so running streams keep their pace")
    one_thread_below_mmacs: float = Field(default=32.0, ge=0,
        description="a forward whose positions x one block's parameters is below this many million runs on one "
                    "intra-op thread (waking the others after an idle wait costs more than they save); 0: never")

    def named(self, loaded: LoadedModel) -> LoadedModel:
        """`loaded` under `served_model_name` when one is set (a copy: the model itself is shared)."""
        return dataclasses.replace(loaded, name=self.served_model_name) if self.served_model_name else loaded

    def batch_limits(self) -> BatchLimits:
        """The torch runner's batch limits from these settings."""
        return BatchLimits(max_batch=self.max_batch, max_tokens=max(self.max_batch_tokens, self.max_batch),
                           prefill_chunk=self.prefill_chunk, one_thread_below=int(self.one_thread_below_mmacs * 1e6))
