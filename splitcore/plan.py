"""The `Plan`: where the model is cut and how activations cross the link.

With `L` decoder blocks, a plan with cuts `a <= b` runs blocks `[0, a)` on
the edge, `[a, b)` in the cloud and `[b, L)` on the edge again, followed by
the final norm and LM head on the tier named by `head` (U-shaped split).
`a = b = L` is edge-only; `a = 0, b = L, head = "cloud"` is cloud-only.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from splitcore.errors import PlanError
from splitcore.ranges import LayerRange

CodecName = Literal["fp32", "fp16", "bf16", "int8"]
Tier = Literal["edge", "cloud"]
BackendName = Literal["torch", "onnxruntime"]


class Plan(BaseModel):
    """One partition of a model of `num_layers` decoder blocks across edge and cloud."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_layers: int = Field(ge=1)
    cut_a: int = Field(ge=0, description="first cloud block; the edge runs [0, cut_a)")
    cut_b: int = Field(ge=0, description="first block back on the edge; the cloud runs [cut_a, cut_b)")
    head: Tier = "edge"
    codec: CodecName = "fp16"
    zstd_level: int = Field(default=1, ge=-7, le=22, description="negative: faster, weaker; 0: zstd's default (3)")
    edge_backend: BackendName | None = Field(default=None, description="edge runtime; None: its --backend")
    cloud_backend: BackendName | None = Field(default=None, description="cloud runtime; None: its --backend")

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if not self.cut_a <= self.cut_b <= self.num_layers:
            raise PlanError(f"cuts must satisfy 0 <= a <= b <= {self.num_layers}, got a={self.cut_a} b={self.cut_b}")
        if self.head == "cloud" and self.cut_b != self.num_layers:
            raise PlanError("the head can run in the cloud only when the cloud runs through the last block (b = L)")
        if self.head == "cloud" and self.cut_a == self.cut_b == self.num_layers:
            raise PlanError("an edge-only plan (a = b = L) keeps the head on the edge")
        return self

    @property
    def edge_front(self) -> LayerRange:
        return LayerRange(start=0, end=self.cut_a)

    @property
    def cloud_layers(self) -> LayerRange:
        return LayerRange(start=self.cut_a, end=self.cut_b)

    @property
    def edge_back(self) -> LayerRange:
        return LayerRange(start=self.cut_b, end=self.num_layers)

    @property
    def uses_cloud(self) -> bool:
        return len(self.cloud_layers) > 0 or self.head == "cloud"

    @property
    def tokens_leave_device(self) -> bool:
        """True when token ids (or the sampled token) cross the link."""
        return self.uses_cloud and (self.cut_a == 0 or self.head == "cloud")

    def check_privacy(self, allow_tokens_off_device: bool) -> None:
        """The privacy setting, checked in one place for every way a plan is set.

        Raises:
            PlanError: token ids would leave the device and the setting forbids it.
        """
        if self.tokens_leave_device and not allow_tokens_off_device:
            raise PlanError(f"plan {self.describe()} sends token ids to the cloud, which this edge's privacy setting "
                            "forbids: allow it with --allow-tokens-off-device (EDGE_ALLOW_TOKENS_OFF_DEVICE=1) "
                            "or keep block 0 and the head on the edge")

    def describe(self) -> str:
        if not self.uses_cloud:
            return f"edge-only ({self.num_layers} blocks on the edge){self._runtimes()}"
        if self.cut_a == 0 and self.head == "cloud":
            return f"cloud-only ({self.num_layers} blocks in the cloud, codec {self.codec}){self._runtimes()}"
        return (
            f"edge {self.edge_front} -> cloud {self.cloud_layers} -> edge {self.edge_back}, "
            f"head on {self.head}, codec {self.codec}{self._runtimes()}"
        )

    def _runtimes(self) -> str:
        named = [f"{tier} on {name}" for tier, name in (("edge", self.edge_backend), ("cloud", self.cloud_backend))
                 if name is not None and (tier == "edge" or self.uses_cloud)]
        return f" ({', '.join(named)})" if named else ""


def parse_cut(spec: str, num_layers: int, codec: CodecName = "fp16", head: Tier = "edge", zstd_level: int = 1) -> Plan:
    """Parse a `--cut` flag: `A:B`, `A` (same as `A:L`), `edge` or `cloud`.

    Raises:
        PlanError: when the spec is not one of those forms or does not fit the model.
    """
    spec = spec.strip().lower()
    if spec in ("edge", "edge-only"):
        return Plan(num_layers=num_layers, cut_a=num_layers, cut_b=num_layers, codec=codec, zstd_level=zstd_level)
    if spec in ("cloud", "cloud-only"):
        return Plan(num_layers=num_layers, cut_a=0, cut_b=num_layers, head="cloud", codec=codec, zstd_level=zstd_level)
    match = re.fullmatch(r"(\d+)(?::(\d+))?", spec)
    if match is None:
        raise PlanError(f"cannot read cut {spec!r}: use A:B (0 <= A <= B <= {num_layers}), A, 'edge' or 'cloud'")
    a = int(match.group(1))
    b = int(match.group(2)) if match.group(2) is not None else num_layers
    return Plan(num_layers=num_layers, cut_a=a, cut_b=b, head=head, codec=codec, zstd_level=zstd_level)
