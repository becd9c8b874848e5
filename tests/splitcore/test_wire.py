"""The binary frame: round trips, and every way a hostile or broken frame is refused."""

from __future__ import annotations

import struct
import uuid

import pytest
import torch
import zstandard

from splitcore.codec import Dtype
from splitcore.errors import FrameError, FrameTooLargeError
from splitcore.ranges import LayerRange
from splitcore.wire import _HEADER, HEADER_BYTES, Flags, FrameCodec, Kind, Limits

SID = uuid.UUID(int=42)
LAYERS = LayerRange(start=2, end=5)


def encode(codec: FrameCodec, tensor: torch.Tensor, meta: bytes = b"") -> bytes:
    return codec.encode(SID, 7, LAYERS, tensor, Flags.HEAD, meta=meta, compute_ms=1.5)


@pytest.mark.parametrize("dtype", list(Dtype)[:4])
def test_hidden_frames_round_trip_with_their_header(dtype: Dtype) -> None:
    codec = FrameCodec(dtype, zstd_level=3)
    x = torch.randn(5, 32)
    frame = codec.decode(encode(codec, x, meta=b'{"a":1}'))
    assert (frame.session, frame.position, frame.layers, frame.kind) == (SID, 7, LAYERS, Kind.HIDDEN)
    assert Flags.HEAD in frame.flags and frame.meta == b'{"a":1}' and frame.compute_ms == 1.5
    assert frame.tensor.shape == (5, 32) and torch.allclose(frame.tensor, x, atol=0.05, rtol=0.02)


def test_token_frames_carry_exact_ids() -> None:
    codec = FrameCodec()
    frame = codec.decode(encode(codec, torch.tensor([0, 5, 50_000])))
    assert frame.kind == Kind.TOKENS and frame.tensor.tolist() == [0, 5, 50_000]


def test_an_int8_decode_step_is_hidden_size_plus_a_small_header() -> None:
    data = FrameCodec(Dtype.INT8).encode(SID, 9, LAYERS, torch.randn(1, 768))
    assert len(data) == 768 + 4 + HEADER_BYTES and HEADER_BYTES <= 64


def test_a_flipped_bit_fails_the_checksum() -> None:
    codec = FrameCodec(Dtype.FP32)
    data = bytearray(encode(codec, torch.randn(2, 8)))
    data[-3] ^= 0x40
    with pytest.raises(FrameError, match="checksum"):
        codec.decode(bytes(data))


@pytest.mark.parametrize("cut", [0, 10, HEADER_BYTES, -1])
def test_truncated_frames_are_refused(cut: int) -> None:
    codec = FrameCodec()
    data = encode(codec, torch.randn(2, 8))
    with pytest.raises(FrameError):
        codec.decode(data[:cut])


def _patch(data: bytes, **fields: int | bytes) -> bytes:
    names = ["magic", "version", "kind", "dtype", "flags", "session", "position", "start", "end", "rows", "cols",
             "raw_len", "body_len", "meta_len", "crc", "compute_ms"]
    values = dict(zip(names, _HEADER.unpack_from(data), strict=True))
    values.update(fields)
    return _HEADER.pack(*values.values()) + data[HEADER_BYTES:]


@pytest.mark.parametrize(("fields", "error", "match"), [
    ({"magic": b"HTTP"}, FrameError, "magic"),
    ({"version": 9}, FrameError, "version"),
    ({"dtype": 77}, FrameError, "bad frame field"),
    ({"kind": Kind.TOKENS}, FrameError, "int32"),
    ({"rows": 10**6}, FrameTooLargeError, "limit"),
    ({"cols": 9}, FrameTooLargeError, "does not fit"),
    ({"raw_len": 2**31}, FrameTooLargeError, "does not fit"),
    ({"body_len": 3}, FrameError, "declares"),
    ({"start": 6}, FrameError, "reversed"),
])
def test_inconsistent_headers_are_refused(fields: dict, error: type[Exception], match: str) -> None:
    codec = FrameCodec(Dtype.FP32)
    data = _patch(encode(codec, torch.randn(2, 8)), **fields)
    with pytest.raises(error, match=match):
        codec.decode(data)


def test_a_bomb_body_is_refused_without_expanding_it() -> None:
    """A frame that claims a 2x8 fp32 tensor but whose zstd body expands to 64 MiB."""
    import zlib

    codec = FrameCodec(Dtype.FP32)
    body = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (64 * 2**20))
    header = _HEADER.pack(b"ESPL", 1, Kind.HIDDEN, Dtype.FP32, Flags.ZSTD, SID.bytes, 0, 0, 1, 2, 8, 64, len(body), 0,
                          zlib.crc32(body), 0.0)
    with pytest.raises(FrameTooLargeError):
        codec.decode(header + body)


def test_limits_are_configurable() -> None:
    codec = FrameCodec(Dtype.FP32, limits=Limits(max_rows=4))
    with pytest.raises(FrameTooLargeError):
        codec.decode(encode(FrameCodec(Dtype.FP32), torch.randn(5, 8)))
    assert codec.decode(encode(FrameCodec(Dtype.FP32), torch.randn(4, 8))).tensor.shape == (4, 8)
    assert struct.calcsize("<4sBBBB16sIHHIIIIHIf") == HEADER_BYTES


def test_an_answer_encoded_since_a_moment_reports_the_time_from_then_through_its_own_encoding() -> None:
    import time

    codec = FrameCodec(Dtype.INT8, zstd_level=3)
    received = time.perf_counter() - 0.05  # the frame came in 50 ms ago
    before = time.perf_counter()
    frame = codec.decode(codec.encode(uuid.uuid4(), 0, LayerRange(start=0, end=1), torch.randn(64, 256),
                                      since=received))
    assert (before - received) * 1000 <= frame.compute_ms <= (time.perf_counter() - received) * 1000 + 0.01
