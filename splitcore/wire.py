"""The binary frame that carries activations (or token ids) between tiers.

One frame per request body and response body, never JSON or base64:

    header (fixed, little-endian, 58 bytes)
        magic "ESPL" | version u8 | kind u8 | dtype u8 | flags u8 | session 16 bytes
        | position u32 | layer start u16 | layer end u16 | rows u32 | cols u32
        | raw_len u32 | body_len u32 | meta_len u16 | crc32 u32 | compute_ms f32 (sender's time on the step)
    meta   (meta_len bytes, JSON, only on a session's first frame: sampling settings)
    body   (body_len bytes: quantised tensor, zstd-compressed when FLAG_ZSTD)

The crc32 covers meta and body. Every length is checked against limits
before anything is allocated.
"""

from __future__ import annotations

import struct
import time
import uuid
import zlib
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

import torch

from splitcore.codec import Compressor, Decompressor, Dtype, dequantise, quantise, raw_nbytes
from splitcore.errors import FrameError, FrameTooLargeError
from splitcore.ranges import LayerRange

MAGIC = b"ESPL"
VERSION = 1
_HEADER = struct.Struct("<4sBBBB16sIHHIIIIHIf")
HEADER_BYTES = _HEADER.size
MEDIA_TYPE = "application/x-edgesplit-frame"


class Kind(IntEnum):
    HIDDEN = 0  # hidden states (rows = positions, cols = hidden size)
    TOKENS = 1  # token ids (cols = 1)


class Flags(IntFlag):
    NONE = 0
    ZSTD = 1  # body is zstd-compressed
    HEAD = 2  # request: run the final norm and LM head after the layers and answer with a sampled token
    LAST_ROW = 4  # request: answer with the last position's hidden state only (no edge blocks follow)
    # request: first roll the session back to `position` (drafts of the last step the edge rejected); valid only
    # after the last step's first position and not past the session's end
    ROLLBACK = 8


@dataclass(frozen=True)
class Limits:
    """Hard bounds a receiver enforces before allocating anything."""

    max_rows: int = 8192  # positions per frame
    max_cols: int = 16384  # hidden size
    max_body_bytes: int = 64 * 1024 * 1024  # compressed body
    max_raw_bytes: int = 256 * 1024 * 1024  # decompressed payload
    max_meta_bytes: int = 4096  # JSON metadata


@dataclass(frozen=True)
class Frame:
    """A decoded frame; `tensor` is (rows, cols) fp32 for hidden states, (rows,) int64 for tokens."""

    session: uuid.UUID
    position: int
    layers: LayerRange
    kind: Kind
    dtype: Dtype
    tensor: torch.Tensor
    flags: Flags = Flags.NONE
    meta: bytes = b""
    compute_ms: float = 0.0
    wire_bytes: int = field(default=0, compare=False)


class FrameCodec:
    """Encodes and decodes frames; holds reusable zstd contexts (one per thread)."""

    def __init__(self, dtype: Dtype = Dtype.FP16, zstd_level: int = 1, limits: Limits | None = None) -> None:
        self.dtype = dtype
        self.limits = limits or Limits()
        self._compressor = Compressor(zstd_level)
        self._decompressor = Decompressor()

    def encode(self, session: uuid.UUID, position: int, layers: LayerRange, tensor: torch.Tensor,
               flags: Flags = Flags.NONE, meta: bytes = b"", compute_ms: float = 0.0, since: float | None = None
               ) -> bytes:
        """Encode hidden states (rows, cols) or token ids (rows,) into one frame.

        `since` (a `time.perf_counter()` reading) sets `compute_ms` to the time from then to the end of this
        encoding: an answer reports the sender's whole time on the step, so the receiver's link estimate counts
        only the wire (`profiling.link_estimator`)."""
        if tensor.dtype.is_floating_point:
            kind, dtype, rows_cols = Kind.HIDDEN, self.dtype, tensor.reshape(-1, tensor.shape[-1])
        else:
            kind, dtype, rows_cols = Kind.TOKENS, Dtype.INT32, tensor.reshape(-1, 1).to(torch.int32)
        rows, cols = rows_cols.shape
        raw = quantise(rows_cols, dtype)
        body, zipped = self._compressor.compress(raw)
        if zipped:
            flags |= Flags.ZSTD
        crc = zlib.crc32(body, zlib.crc32(meta))
        if since is not None:
            compute_ms = (time.perf_counter() - since) * 1000
        header = _HEADER.pack(MAGIC, VERSION, kind, dtype, flags, session.bytes, position, layers.start, layers.end,
                              rows, cols, len(raw), len(body), len(meta), crc, compute_ms)
        return b"".join((header, meta, body))

    def decode(self, data: bytes) -> Frame:
        """Decode and validate one frame.

        Raises:
            FrameError: malformed, corrupt or inconsistent frame.
            FrameTooLargeError: a declared or actual size over the limits.
        """
        lim = self.limits
        if len(data) < HEADER_BYTES:
            raise FrameError(f"frame is {len(data)} bytes, shorter than its {HEADER_BYTES}-byte header")
        (magic, version, kind, dtype, flags, sid, position, start, end, rows, cols,
         raw_len, body_len, meta_len, crc, compute_ms) = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise FrameError("not an edgesplit frame (bad magic)")
        if version != VERSION:
            raise FrameError(f"frame version {version} is not supported (this side speaks {VERSION})")
        try:
            kind, dtype, flags = Kind(kind), Dtype(dtype), Flags(flags)
        except ValueError as exc:  # an unknown enum value is a malformed frame
            raise FrameError(f"bad frame field: {exc}") from exc
        if (kind == Kind.TOKENS) != (dtype == Dtype.INT32) or (kind == Kind.TOKENS and cols != 1):
            raise FrameError("token frames carry int32 ids in one column; hidden frames carry floats")
        if rows > lim.max_rows or cols > lim.max_cols:
            raise FrameTooLargeError(f"frame shape {rows}x{cols} is over the limit {lim.max_rows}x{lim.max_cols}")
        if body_len > lim.max_body_bytes or meta_len > lim.max_meta_bytes:
            raise FrameTooLargeError("frame body or metadata is over the size limit")
        if raw_len != raw_nbytes(dtype, rows, cols) or raw_len > lim.max_raw_bytes:
            raise FrameTooLargeError(f"declared payload {raw_len} bytes does not fit {rows}x{cols} {dtype.name}"
                                     f" within {lim.max_raw_bytes} bytes")
        if len(data) != HEADER_BYTES + meta_len + body_len:
            raise FrameError(f"frame is {len(data)} bytes, header declares {HEADER_BYTES + meta_len + body_len}")
        if start > end:
            raise FrameError(f"layer range [{start}, {end}) is reversed")
        view = memoryview(data)
        meta = bytes(view[HEADER_BYTES:HEADER_BYTES + meta_len])
        body = bytes(view[HEADER_BYTES + meta_len:])
        if zlib.crc32(body, zlib.crc32(meta)) != crc:
            raise FrameError("frame checksum mismatch (corrupted in transit)")
        if Flags.ZSTD in flags:
            raw = self._decompressor.decompress(body, raw_len)
        elif body_len != raw_len:
            raise FrameError("uncompressed body length differs from the declared payload")
        else:
            raw = body
        tensor = dequantise(raw, dtype, rows, cols)
        if kind == Kind.TOKENS:
            tensor = tensor.view(rows)
        return Frame(session=uuid.UUID(bytes=sid), position=position, layers=LayerRange(start=start, end=end),
                     kind=kind, dtype=dtype, tensor=tensor, flags=flags, meta=meta, compute_ms=compute_ms,
                     wire_bytes=len(data))


def short_id(sid: uuid.UUID) -> str:
    """A session id as logs and error messages show it: enough to follow one session, not enough to step it."""
    return f"{sid.hex[:8]}..."

