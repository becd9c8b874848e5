"""Round-trip error bounds per dtype, and bounded zstd."""

from __future__ import annotations

import pytest
import torch
import zstandard

from splitcore.codec import Compressor, Decompressor, Dtype, dequantise, quantise, raw_nbytes
from splitcore.errors import FrameError, FrameTooLargeError


def roundtrip(x: torch.Tensor, dtype: Dtype) -> torch.Tensor:
    return dequantise(quantise(x, dtype), dtype, *x.shape)


@pytest.fixture
def hidden() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(17, 96, generator=g) * torch.logspace(-2, 2, 17).unsqueeze(1)  # rows of very different scale


def test_fp32_is_lossless(hidden: torch.Tensor) -> None:
    assert torch.equal(roundtrip(hidden, Dtype.FP32), hidden)


@pytest.mark.parametrize(("dtype", "mantissa_bits"), [(Dtype.FP16, 10), (Dtype.BF16, 7)])
def test_half_precision_error_is_within_half_an_ulp(hidden: torch.Tensor, dtype: Dtype, mantissa_bits: int) -> None:
    err = (roundtrip(hidden, dtype) - hidden).abs()
    assert torch.all(err <= hidden.abs() * 2.0 ** -(mantissa_bits + 1) + 1e-7)


def test_int8_error_is_within_half_a_step_of_each_rows_scale(hidden: torch.Tensor) -> None:
    err = (roundtrip(hidden, Dtype.INT8) - hidden).abs()
    step = hidden.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all(err <= step / 2 + 1e-6)


def test_int8_payload_is_one_byte_per_value_plus_a_scale_per_row() -> None:
    assert raw_nbytes(Dtype.INT8, 1, 768) == 768 + 4
    assert len(quantise(torch.randn(1, 768), Dtype.INT8)) == 772


def test_a_payload_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(FrameError, match="expected"):
        dequantise(b"\x00" * 10, Dtype.FP32, 2, 2)


def test_zstd_shrinks_redundant_data_and_never_grows_noise() -> None:
    comp = Compressor(3)
    body, zipped = comp.compress(b"\x01" * 4096)
    assert zipped and len(body) < 100
    noise = torch.randint(-127, 127, (768,), dtype=torch.int8).numpy().tobytes()
    body, zipped = comp.compress(noise)
    assert not zipped and body == noise


def test_a_zstd_bomb_declaring_its_size_is_refused_before_decompressing() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (64 * 2**20))
    with pytest.raises(FrameTooLargeError, match="declares"):
        Decompressor().decompress(bomb, expected_bytes=1024)


def test_a_streamed_zstd_bomb_without_a_declared_size_stops_at_the_limit() -> None:
    chunker = zstandard.ZstdCompressor(level=19, write_content_size=False).compressobj()
    bomb = chunker.compress(b"\x00" * (64 * 2**20)) + chunker.flush()
    assert zstandard.frame_content_size(bomb) == -1
    with pytest.raises(FrameTooLargeError, match="more than"):
        Decompressor().decompress(bomb, expected_bytes=1024)


def test_corrupt_zstd_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        Decompressor().decompress(b"\x28\xb5\x2f\xfd" + b"\xff" * 32, expected_bytes=100)
