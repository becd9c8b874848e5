"""The cloud service's own cost per request, measured through the real app (what the cost model queues)."""

from __future__ import annotations

import math

from cloud_service.selfcost import measure_request_ms
from splitcore.loading import LoadedModel


def test_a_request_costs_the_service_something_besides_its_round_alone_and_in_a_batch(
        models: dict[str, LoadedModel]) -> None:
    alone, busy = measure_request_ms(models["gpt2"], requests=12, sessions=4)
    # middleware, frame codec, session store and sampler: well under a millisecond or two each, never nothing
    assert 0 < alone < 50 and math.isfinite(busy) and 0 <= busy < 50
