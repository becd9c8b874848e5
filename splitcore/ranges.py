"""The half-open layer range `[start, end)` used everywhere (as exo's shard metadata)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator


class LayerRange(BaseModel):
    """Decoder blocks `[start, end)`; empty when `start == end`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> LayerRange:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"layer range must satisfy 0 <= start <= end, got [{self.start}, {self.end})")
        return self

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):  # type: ignore[override]  # iterate layer indices, not pydantic fields
        return iter(range(self.start, self.end))

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"

    def within(self, other: LayerRange) -> bool:
        """True when every layer of this range is in `other`."""
        return len(self) == 0 or (other.start <= self.start and self.end <= other.end)
