"""Shared fixtures: tiny real models per family (built once per session), servers on loopback."""

from __future__ import annotations

import pytest
import torch

from splitcore.loading import LoadedModel
from splitcore.testing import tiny_model

FAMILIES = ["gpt2", "llama", "qwen2", "mistral"]


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # two cores: leave one to the other tier in service tests


@pytest.fixture(scope="session")
def models() -> dict[str, LoadedModel]:
    return {family: tiny_model(family) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """One ONNX export cache for the whole run: each range is exported once."""
    return tmp_path_factory.mktemp("onnx")
