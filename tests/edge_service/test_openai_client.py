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


def test_null_means_the_default_as_sdks_send_it(client: tuple[OpenAI, str]) -> None:
    api, model = client
    out = api.completions.create(model=model, prompt="The edge", max_tokens=None, temperature=None, top_p=None, n=None,
                                 stream=None, presence_penalty=None, frequency_penalty=None, logit_bias=None,
                                 seed=None, stop=None, extra_body={"ignore_eos": True})
    assert out.usage is not None and out.usage.completion_tokens == 16  # completions' default, not the context


def test_harmless_defaults_and_unknown_fields_are_accepted(client: tuple[OpenAI, str]) -> None:
    api, model = client
    out = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                      temperature=0, response_format={"type": "text"}, tool_choice="none",
                                      tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                                      extra_body={"repetition_penalty": 1.0, "skip_special_tokens": True,
                                                  "ignore_eos": True})
    assert out.usage is not None and out.usage.completion_tokens == 4


def test_ignore_eos_and_continuous_usage_stats_as_guidellm_sends_them(client: tuple[OpenAI, str]) -> None:
    api, model = client
    stream = api.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count"}], max_completion_tokens=9, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
        extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks if c.usage is not None]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 9


def test_completion_logprobs_are_the_models_under_greedy_choice(client: tuple[OpenAI, str]) -> None:
    api, model = client
    out = api.completions.create(model=model, prompt="Log probabilities", max_tokens=6, temperature=0, logprobs=3,
                                 extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == out.choices[0].text
    for token_logprob, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) <= 3 and token_logprob <= 0.0
        # greedy picks the most likely token (texts of ids that decode alike share a key, as in OpenAI's shape)
        assert token_logprob >= max(top.values()) - 1e-5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]


def test_chat_logprobs_streamed_and_not_agree(client: tuple[OpenAI, str]) -> None:
    api, model = client
    ask = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "temperature": 0,
           "logprobs": True, "top_logprobs": 2, "extra_body": {"ignore_eos": True}}
    whole = api.chat.completions.create(**ask)  # type: ignore[call-overload]
    content = whole.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.bytes == list(t.token.encode()) for t in content)
    streamed = [t for c in api.chat.completions.create(**ask, stream=True) if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]


def test_echo_prepends_the_prompt(client: tuple[OpenAI, str]) -> None:
    api, model = client
    plain = api.completions.create(model=model, prompt="Echo this", max_tokens=4, temperature=0)
    echoed = api.completions.create(model=model, prompt="Echo this", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == "Echo this" + plain.choices[0].text
    streamed = api.completions.create(model=model, prompt="Echo this", max_tokens=4, temperature=0, echo=True,
                                      stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text


@pytest.mark.parametrize(("ask", "param"), [
    ({"n": 2}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"min_tokens": 9}, "min_tokens"),
    ({"stop_token_ids": [10**9]}, "stop_token_ids"),
])
def test_what_is_truly_unsupported_is_refused_naming_the_field(client: tuple[OpenAI, str], ask: dict,
                                                                param: str) -> None:
    import httpx

    api, model = client
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **ask}
    answer = httpx.post(f"{api.base_url}chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
