"""The activation codec: quantise hidden states, then zstandard.

Rows are positions, columns the hidden size. int8 uses one symmetric fp32
scale per row (absmax / 127), so a decode step of a 768-wide model costs
768 + 4 bytes. zstd is skipped per frame when it would not shrink the data
(one decode row of int8 rarely compresses), so a frame never grows.
Decompression is bounded by the size the header declares: a small frame
cannot expand into more than the tensor it claims to carry.
"""

from __future__ import annotations

import io
from enum import IntEnum

import torch
import zstandard

from splitcore.errors import FrameError, FrameTooLargeError


class Dtype(IntEnum):
    """On-the-wire element type; the numbers are part of the frame format."""

    FP32 = 0
    FP16 = 1
    BF16 = 2
    INT8 = 3
    INT32 = 4  # token ids


DTYPE_BY_NAME = {"fp32": Dtype.FP32, "fp16": Dtype.FP16, "bf16": Dtype.BF16, "int8": Dtype.INT8}
_TORCH = {Dtype.FP32: torch.float32, Dtype.FP16: torch.float16, Dtype.BF16: torch.bfloat16, Dtype.INT32: torch.int32}
_ITEM_BYTES = {Dtype.FP32: 4, Dtype.FP16: 2, Dtype.BF16: 2, Dtype.INT8: 1, Dtype.INT32: 4}
_SCALE_BYTES = 4  # int8: one fp32 scale per row


def raw_nbytes(dtype: Dtype, rows: int, cols: int) -> int:
    """Bytes of the uncompressed payload for a (rows, cols) tensor in `dtype`."""
    scales = rows * _SCALE_BYTES if dtype == Dtype.INT8 else 0
    return rows * cols * _ITEM_BYTES[dtype] + scales


def quantise(x: torch.Tensor, dtype: Dtype) -> bytes:
    """Serialise a (rows, cols) tensor to raw payload bytes in `dtype`."""
    assert x.dim() == 2, f"expected (rows, cols), got shape {tuple(x.shape)}"
    if dtype == Dtype.INT8:
        x = x.float()
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0  # (rows, 1)
        q = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)  # (rows, cols)
        return scale.numpy().tobytes() + q.numpy().tobytes()
    t = x.to(_TORCH[dtype]).contiguous()
    if dtype == Dtype.BF16:  # numpy has no bfloat16: ship its bits
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def dequantise(payload: bytes, dtype: Dtype, rows: int, cols: int) -> torch.Tensor:
    """Inverse of `quantise`; floats come back as fp32, token ids as int64."""
    if len(payload) != raw_nbytes(dtype, rows, cols):
        raise FrameError(f"payload is {len(payload)} bytes, expected {raw_nbytes(dtype, rows, cols)} for {rows}x{cols}")
    buf = bytearray(payload)  # torch.frombuffer needs a writable buffer
    if dtype == Dtype.INT8:
        split = rows * _SCALE_BYTES
        scale = torch.frombuffer(buf, dtype=torch.float32, count=rows).view(rows, 1)
        q = torch.frombuffer(buf, dtype=torch.int8, offset=split).view(rows, cols)
        return q.float() * scale
    if rows * cols == 0:
        return torch.empty(rows, cols, dtype=torch.int64 if dtype == Dtype.INT32 else torch.float32)
    t = torch.frombuffer(buf, dtype=_TORCH[dtype]).view(rows, cols)
    return t.long() if dtype == Dtype.INT32 else t.float()


class Compressor:
    """zstd with a reusable context; returns (body, compressed?)."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._cctx = zstandard.ZstdCompressor(level=level)

    def compress(self, raw: bytes) -> tuple[bytes, bool]:
        body = self._cctx.compress(raw)
        if len(body) >= len(raw):
            return raw, False
        return body, True


class Decompressor:
    """Bounded zstd decompression: never produces more than the declared size."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()

    def decompress(self, body: bytes, expected_bytes: int) -> bytes:
        out = io.BytesIO()
        try:
            declared = zstandard.frame_content_size(body)
            if declared > expected_bytes:
                raise FrameTooLargeError(f"compressed body declares {declared} bytes, header says {expected_bytes}")
            with self._dctx.stream_reader(body) as reader:
                while out.tell() <= expected_bytes:
                    chunk = reader.read(expected_bytes + 1 - out.tell())
                    if not chunk:
                        break
                    out.write(chunk)
        except zstandard.ZstdError as exc:  # corrupt input is the caller's fault
            raise FrameError(f"body is not valid zstd: {exc}") from exc
        if out.tell() > expected_bytes:
            raise FrameTooLargeError(f"body decompresses to more than the {expected_bytes} bytes the header declares")
        if out.tell() < expected_bytes:
            raise FrameError(f"body decompresses to {out.tell()} bytes, header declares {expected_bytes}")
        return out.getvalue()
