"""The official `openai` client, unchanged but for `base_url`, against a running edge and cloud."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from splitcore.loading import LoadedModel
from tests.servers import edge_and_cloud


@pytest.fixture(scope="module")
def client(models: dict[str, LoadedModel]) -> Iterator[tuple[OpenAI, str]]:
    loaded = models["gpt2"]
    with edge_and_cloud(loaded, cut="1:3", codec="fp16") as tiers:
        yield OpenAI(base_url=f"{tiers.edge_url}/v1", api_key="not-checked", max_retries=0), loaded.name


def test_completions_streamed_and_not_agree(client: tuple[OpenAI, str]) -> None:
    api, model = client
    whole = api.completions.create(model=model, prompt="Tokens stay on", max_tokens=12, temperature=0)
    assert whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    stream = api.completions.create(model=model, prompt="Tokens stay on", max_tokens=12, temperature=0, stream=True,
                                    stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_completions_streamed_and_not_agree(client: tuple[OpenAI, str]) -> None:
    api, model = client
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where do tokens stay?"}]
    whole = api.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    text = whole.choices[0].message.content
    stream = api.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_seeded_sampling_is_reproducible(client: tuple[OpenAI, str]) -> None:
    api, model = client
    a = api.completions.create(model=model, prompt="The cloud", max_tokens=8, temperature=0.9, top_p=0.9, seed=3)
    b = api.completions.create(model=model, prompt="The cloud", max_tokens=8, temperature=0.9, top_p=0.9, seed=3)
    assert a.choices[0].text == b.choices[0].text


def test_models_lists_the_served_model(client: tuple[OpenAI, str]) -> None:
    api, model = client
    assert [m.id for m in api.models.list()] == [model]


def test_client_errors_surface_as_openai_exceptions(client: tuple[OpenAI, str]) -> None:
    import openai

    api, model = client
    with pytest.raises(openai.BadRequestError, match="n = 1"):
        api.completions.create(model=model, prompt="x", n=2)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-model", prompt="x")
