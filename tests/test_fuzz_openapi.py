"""Schemathesis against both services' own OpenAPI: no input the schema admits gets a 5xx, none hangs.

Bounded here (`FUZZ_EXAMPLES` per operation, default 20) so it fits the test suite; a longer run is the same
test with more: `FUZZ_EXAMPLES=500 pytest tests/test_fuzz_openapi.py`. Requests carry the services' tokens,
so the guarded routes are fuzzed too.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from cloud_service.app import create_app as create_cloud
from cloud_service.settings import CloudSettings
from edge_service.app import create_app as create_edge
from edge_service.settings import EdgeSettings
from splitcore.loading import LoadedModel
from splitcore.testing import tiny_model
from tests.servers import LoopbackServer

pytestmark = pytest.mark.e2e  # spawns processes, drives a browser or fuzzes: out of the fast loop (-m 'not e2e')

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
CLOUD_TOKEN, ADMIN_TOKEN = "fuzz-cloud-token", "fuzz-admin-token"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_model() -> LoadedModel:
    return tiny_model("gpt2", seed=7)  # its own copy: fuzzed plans and profiles must not touch shared fixtures


@pytest.fixture(scope="module")
def cloud_url(fuzz_model: LoadedModel) -> Iterator[str]:
    with LoopbackServer(create_cloud(CloudSettings(auth_token=CLOUD_TOKEN, max_frame_mb=1), fuzz_model)) as url:
        yield url


@pytest.fixture(scope="module")
def edge_url(fuzz_model: LoadedModel, cloud_url: str) -> Iterator[str]:
    settings_ = EdgeSettings(cloud_url=cloud_url, cut="1:3", cloud_token=CLOUD_TOKEN, admin_token=ADMIN_TOKEN,
                             max_output_tokens=8, max_prompt_tokens=64, cloud_step_timeout_s=5)
    with LoopbackServer(create_edge(settings_, fuzz_model)) as url:
        yield url


def fuzz(base_url: str, headers: dict[str, str], timeout_s: float) -> tuple[list[str], Counter[str]]:
    """Run every operation of the service's OpenAPI through Hypothesis: the failures, and statuses per operation."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)  # guarded on the cloud
    failures: list[str] = []
    seen: Counter[str] = Counter()

    def runner(operation: schemathesis.APIOperation) -> Callable[[], None]:
        @given(case=operation.as_strategy())
        @FUZZ
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=timeout_s)
            seen[f"{operation.label} {response.status_code}"] += 1
        return run  # type: ignore[no-any-return]

    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            runner(operation)()
        except Exception as exc:  # noqa: BLE001  # gathered, so every operation is fuzzed before the test fails
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    return failures, seen


def test_the_cloud_never_answers_5xx_or_hangs(cloud_url: str) -> None:
    failures, seen = fuzz(cloud_url, {"authorization": f"Bearer {CLOUD_TOKEN}"}, 20)
    assert failures == []
    assert sum(n for key, n in seen.items() if key.startswith("POST /v1/shard/forward 4")) >= EXAMPLES // 2, seen
    assert any(key.startswith("POST /v1/layers 2") for key in seen), seen


def test_the_edge_never_answers_5xx_or_hangs(edge_url: str) -> None:
    failures, seen = fuzz(edge_url, {"authorization": f"Bearer {ADMIN_TOKEN}"}, 30)
    assert failures == []
    for operation in ("POST /v1/completions", "POST /v1/chat/completions", "POST /admin/plan"):
        assert sum(n for key, n in seen.items() if key.startswith(operation)) >= EXAMPLES // 2, seen
