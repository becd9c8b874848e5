"""The edge's OpenAPI schema shows what each endpoint answers, and the responder's output is those models."""

from __future__ import annotations

import httpx

from edge_service.app import create_app
from edge_service.protocol import ChatCompletionStreamResponse, CompletionResponse, DeltaMessage
from edge_service.settings import EdgeSettings
from splitcore.loading import LoadedModel
from tests.servers import LoopbackServer


def test_the_openapi_schema_names_every_response_shape(models: dict[str, LoadedModel]) -> None:
    spec = create_app(EdgeSettings(cut="edge"), models["gpt2"]).openapi()
    completions = spec["paths"]["/v1/completions"]["post"]["responses"]
    assert completions["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompletionResponse")
    assert completions["200"]["content"]["text/event-stream"]["schema"]["title"] == "CompletionStreamResponse"
    assert completions["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat["text/event-stream"]["schema"]["title"] == "ChatCompletionStreamResponse"
    models_ok = spec["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models_ok["$ref"].endswith("/ModelList")
    assert {"Usage", "EdgesplitInfo", "LinkUsage", "ChatCompletionResponse"} <= set(spec["components"]["schemas"])


def test_an_empty_delta_is_an_empty_object_and_usage_appears_only_when_there() -> None:
    assert DeltaMessage().model_dump() == {}
    chunk = ChatCompletionStreamResponse(id="c", created=0, model="m", choices=[])
    assert set(chunk.model_dump()) == {"id", "object", "created", "model", "choices"}


def test_bodies_and_stream_chunks_parse_as_the_protocols_models(models: dict[str, LoadedModel]) -> None:
    with LoopbackServer(create_app(EdgeSettings(cut="edge"), models["gpt2"])) as url:
        body = {"prompt": "The edge", "max_tokens": 4, "temperature": 0}
        whole = CompletionResponse.model_validate(httpx.post(f"{url}/v1/completions", json=body, timeout=60).json())
        assert 1 <= whole.usage.completion_tokens <= 4 and whole.edgesplit.cut == [4, 4]
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=chat, timeout=60) as r:
            events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionStreamResponse.model_validate_json(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
