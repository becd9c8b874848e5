"""The cost model: predicted time to first token, time per output token, device memory and bytes per token.

`predict(plan, edge, cloud, link, workload)` is pure: the same inputs always give the same `Estimate`,
so the search, the tests and the benchmarks agree on what a plan costs. A step that uses the cloud pays
the link's round trip and per-request overhead, plus its bytes over the bandwidth, each way.

With several generations at once (`Workload.streams`), the edge's core, the cloud's and each direction of the
link are queues that the streams share, and the round trip is a pure delay; a step's time then comes from exact
mean value analysis of that closed network (Reiser and Lavenberg). The streams are a served load: each
generation starts again when it ends, so prompts interleave with other streams' decode steps. The network is
solved for the mean step (a prompt, then `output - 1` decode steps); a prompt or a decode step then takes its own
demand plus the mean demand of every stream it finds queued (the arrival theorem). This is what makes a cut in
the middle pay: the edge and the cloud work on different streams at the same time, so the best plan balances
the two. With one stream it reduces to the sum of the parts.

Both tiers batch their PyTorch decode steps (`splitcore.batching`): n sessions in one round cost what the
profile measured for a round of n (`PartCost.decode_batch_ms`), so each pays `batch_share(n)` of its lone step.
How many share a round depends on how many wait at that tier, which the network's solution gives: the batch
size is found as a fixed point (start from every stream in one round, solve, take each tier's mean queue as its
batch size, repeat). The cloud's own per-request cost (`Profile.request_ms`: middleware, codec, sampling, the
batcher's hand-off) is charged to the cloud's queue, less of it once the cloud batches (`request_cost_ms`); the edge
profile's `request_ms` to the edge's queue for every exchange (its software per exchange, measured the same way
on that machine). Prefill is not shared: a prompt's positions cost the same in a batch.

Speculation (`depth` k > 0 with a measured `DraftProfile`): a decode round drafts k tokens on the edge, sends
k + 1 positions through the cloud in one exchange and runs the back blocks and the head over all of them; it gives
the tokens rounds of depth k gave when replayed on the measured text (`DraftProfile.round_tokens`), so each of
its demands is charged per token as the round's demand over that count. k + 1 positions in one step cost a lone
step plus what the profile's prefill adds from 1 to k + 1.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from profiling.acceptance import DraftProfile
from profiling.link_estimator import Link
from profiling.profile import PartCost, Profile
from splitcore.codec import DTYPE_BY_NAME, raw_nbytes
from splitcore.defaults import MIB
from splitcore.errors import UserError
from splitcore.plan import Plan
from splitcore.schema import StrictModel
from splitcore.wire import HEADER_BYTES

HTTP_BYTES = 160  # request line and headers of one POST and its answer, each way (measured with httpx/uvicorn)
TOKEN_BYTES = 4  # one int32 token id


class Workload(StrictModel):
    prompt_tokens: int = Field(default=128, ge=1)
    output_tokens: int = Field(default=64, ge=1)
    streams: int = Field(default=1, ge=1, le=1024, description="generations running on the edge at once")

    @classmethod
    def parse(cls, spec: str) -> Workload:
        """'PROMPT:OUTPUT[:STREAMS]', e.g. '128:64' or '64:32:4'; 'PROMPT' alone keeps 64 output tokens."""
        prompt, _, rest = spec.partition(":")
        output, _, streams = rest.partition(":")
        try:
            return cls(prompt_tokens=int(prompt), output_tokens=int(output or 64), streams=int(streams or 1))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            raise UserError(f"workload {spec!r}: give PROMPT:OUTPUT[:STREAMS] counts, each at least 1") from exc


class Estimate(StrictModel):
    time_to_first_token_ms: float
    time_per_output_token_ms: float
    total_ms: float
    edge_memory_bytes: int
    bytes_per_token: float = Field(description="bytes crossing the link per decode step, both ways")


def _frame(plan: Plan, sender: Profile, receiver: Profile, rows: int, tokens: bool) -> tuple[int, float]:
    """Bytes on the wire of one frame, and the sender's and receiver's codec time in ms."""
    if tokens:
        return rows * TOKEN_BYTES + HEADER_BYTES + HTTP_BYTES, 0.0
    raw = raw_nbytes(DTYPE_BY_NAME[plan.codec], rows, sender.hidden_size)
    sent, received = sender.codec_cost(plan.codec, plan.zstd_level), receiver.codec_cost(plan.codec, plan.zstd_level)
    ratio = 1.0 if sent is None else (sent.decode_ratio if rows == 1 else sent.prefill_ratio)
    mib = raw / MIB
    cpu = (sent.encode_ms_per_mib * mib if sent else 0.0) + (
        received.decode_ms_per_mib * mib if received and ratio < 1.0 else 0.0)
    return int(raw * min(1.0, ratio)) + HEADER_BYTES + HTTP_BYTES, cpu


class _Demands(StrictModel):
    """What one step of one stream asks of each resource, in ms, and the bytes it moves both ways."""

    edge_ms: float = 0.0
    cloud_ms: float = 0.0
    up_ms: float = 0.0  # serialising the request frame onto the link
    down_ms: float = 0.0
    delay_ms: float = 0.0  # round trip and per-request software overhead: no queue
    bytes: int = 0

    def resources(self) -> list[float]:
        """Demands at the queues: the edge, the cloud, the uplink and the downlink."""
        return [self.edge_ms, self.cloud_ms, self.up_ms, self.down_ms]

    def time_ms(self, streams: int) -> float:
        """One step's time when `streams` run it at once (exact MVA; the plain sum for one stream)."""
        return self.solve(streams)[0]

    def solve(self, streams: int) -> tuple[float, list[float], list[float]]:
        """Exact MVA with `streams` running this step over and over: its time, the mean number of streams at each
        queue (`resources`), and the number an arriving stream finds there (the same with one stream fewer)."""
        demands = self.resources()
        queued = arriving = [0.0] * len(demands)
        total = self.delay_ms + sum(demands)
        for n in range(1, streams + 1):
            arriving = queued
            residence = [d * (1 + q) for d, q in zip(demands, queued, strict=True)]
            total = self.delay_ms + sum(residence)
            queued = [n / total * r for r in residence] if total > 0 else [0.0] * len(demands)
        return total, queued, arriving

    @staticmethod
    def mix(first: _Demands, then: _Demands, steps: int) -> _Demands:
        """The mean step of a generation that runs `first` once, then `then` for the rest of its `steps`."""
        def mean(a: float, b: float) -> float:
            return (a + (steps - 1) * b) / steps
        return _Demands(edge_ms=mean(first.edge_ms, then.edge_ms), cloud_ms=mean(first.cloud_ms, then.cloud_ms),
                        up_ms=mean(first.up_ms, then.up_ms), down_ms=mean(first.down_ms, then.down_ms),
                        delay_ms=mean(first.delay_ms, then.delay_ms), bytes=then.bytes)

    def per_token(self, tokens: float) -> _Demands:
        """A round's demands charged per token when it gives `tokens` tokens on average."""
        return _Demands(edge_ms=self.edge_ms / tokens, cloud_ms=self.cloud_ms / tokens, up_ms=self.up_ms / tokens,
                        down_ms=self.down_ms / tokens, delay_ms=self.delay_ms / tokens,
                        bytes=round(self.bytes / tokens))

    def time_among_ms(self, arriving: list[float], mean: _Demands) -> float:
        """This step's time when it finds `arriving` streams at each queue, each needing `mean`'s demand there."""
        return self.delay_ms + sum(d + q * m for d, q, m in zip(self.resources(), arriving, mean.resources(),
                                                                  strict=True))


def _step_demands(plan: Plan, edge: Profile, cloud: Profile, link: Link, rows: int, context: int, decode: bool,
                  edge_batch: float = 1.0, cloud_batch: float = 1.0) -> _Demands:
    """What one step (the prompt, or one token) of one stream costs each resource, when a decode step shares its
    round with `edge_batch` sessions on the edge and `cloud_batch` on the cloud (itself included)."""
    n_layers = edge.num_layers
    at = context if decode else rows

    def on(batch: float) -> Callable[[PartCost], float]:
        def cost(part: PartCost) -> float:
            return part.decode_at(at) * part.batch_share(batch) if decode else part.prefill_at(at)
        return cost

    def parts(cost: Callable[[PartCost], float], layers: list[PartCost], start: int, end: int) -> float:
        return sum(cost(p) for p in layers[start:end])

    cost, cloud_cost = on(edge_batch), on(cloud_batch)
    if not plan.uses_cloud:
        return _Demands(edge_ms=cost(edge.embed) + parts(cost, edge.layers, 0, n_layers) + cost(edge.head))
    edge_ms = 0.0 if plan.cut_a == 0 else cost(edge.embed) + parts(cost, edge.layers, 0, plan.cut_a)
    cloud_ms = (cloud_cost(cloud.embed) if plan.cut_a == 0 else 0.0) + parts(cloud_cost, cloud.layers, plan.cut_a,
                                                                                plan.cut_b)
    cloud_ms += cloud.request_cost_ms(cloud_batch)  # queues with the compute
    edge_ms += edge.request_ms  # the edge's own software per exchange (HTTP client, framing), on its cores
    up, up_cpu = _frame(plan, edge, cloud, rows, tokens=plan.cut_a == 0)
    if plan.head == "cloud":
        cloud_ms += cloud_cost(cloud.head)
        down, down_cpu = _frame(plan, cloud, edge, 1, tokens=True)
    else:
        back_rows = rows if plan.cut_b < n_layers else 1  # no edge blocks after the cloud: only the last row
        down, down_cpu = _frame(plan, cloud, edge, back_rows, tokens=False)
        edge_ms += parts(cost, edge.layers, plan.cut_b, n_layers) + cost(edge.head)
    ms_per_byte = 8 / link.bandwidth_bps * 1000
    return _Demands(edge_ms=edge_ms + up_cpu + down_cpu, cloud_ms=cloud_ms, up_ms=up * ms_per_byte,
                    down_ms=down * ms_per_byte, delay_ms=link.rtt_ms + link.overhead_ms, bytes=up + down)


def _round_demands(plan: Plan, edge: Profile, cloud: Profile, link: Link, context: int, depth: int,
                   draft_ms: float | None, edge_batch: float = 1.0, cloud_batch: float = 1.0) -> _Demands:
    """One speculative round of `depth` drafts (`edge_service.speculation.speculate`): drafting, then k + 1
    positions through every block of the plan in one exchange, and the head over each. `draft_ms` is a draft
    model's time per draft; None: the edge's own blocks draft (front, back blocks and head per draft)."""
    rows = depth + 1

    def one(part: PartCost, batch: float) -> float:
        return part.decode_at(context) * part.batch_share(batch)

    def many(part: PartCost, batch: float) -> float:  # rows positions in one step, on a cache of `context`
        return one(part, batch) + max(0.0, part.prefill_at(rows) - part.prefill_at(1))

    def blocks(layers: list[PartCost], start: int, end: int, cost: Callable[[PartCost, float], float],
               batch: float) -> float:
        return sum(cost(p, batch) for p in layers[start:end])

    n = edge.num_layers
    front_one = one(edge.embed, edge_batch) + blocks(edge.layers, 0, plan.cut_a, one, edge_batch)
    back_one = blocks(edge.layers, plan.cut_b, n, one, edge_batch) + one(edge.head, edge_batch)
    if draft_ms is None:  # the front runs each draft as it is made (and the token before them); back and head each
        edge_ms = rows * front_one + depth * back_one
    else:  # a draft model drafts; the front runs the token and every draft in one step
        edge_ms = depth * draft_ms + many(edge.embed, edge_batch) + blocks(edge.layers, 0, plan.cut_a, many,
                                                                          edge_batch)
    edge_ms += blocks(edge.layers, plan.cut_b, n, many, edge_batch) + rows * one(edge.head, edge_batch)
    edge_ms += edge.request_ms
    cloud_ms = blocks(cloud.layers, plan.cut_a, plan.cut_b, many, cloud_batch) + cloud.request_cost_ms(cloud_batch)
    up, up_cpu = _frame(plan, edge, cloud, rows, tokens=False)
    down, down_cpu = _frame(plan, cloud, edge, rows, tokens=False)
    ms_per_byte = 8 / link.bandwidth_bps * 1000
    return _Demands(edge_ms=edge_ms + up_cpu + down_cpu, cloud_ms=cloud_ms, up_ms=up * ms_per_byte,
                    down_ms=down * ms_per_byte, delay_ms=link.rtt_ms + link.overhead_ms, bytes=up + down)


def _decode_demands(plan: Plan, edge: Profile, cloud: Profile, link: Link, context: int, edge_batch: float,
                    cloud_batch: float, depth: int, drafts: DraftProfile | None) -> _Demands:
    """A decode step's demands per output token: a plain step, or a speculative round's per token it gives."""
    tokens = drafts.round_tokens(plan, depth) if drafts is not None and depth > 0 else None
    if tokens is None:
        return _step_demands(plan, edge, cloud, link, 1, context, True, edge_batch, cloud_batch)
    assert drafts is not None
    demands = _round_demands(plan, edge, cloud, link, context, depth, drafts.draft_ms, edge_batch, cloud_batch)
    return demands.per_token(tokens)


def _steady(plan: Plan, edge: Profile, cloud: Profile, link: Link, workload: Workload, depth: int = 0,
            drafts: DraftProfile | None = None) -> tuple[float, float, _Demands]:
    """Time to first token, time per output token and the decode step's demands, with `workload.streams`
    generations that each start again when they end (a served load: prompts interleave with other streams'
    decode steps). Each tier's batch size is the mean number of streams at it, found as a damped fixed point."""
    prompt, output, streams = workload.prompt_tokens, workload.output_tokens, workload.streams
    context = prompt + output // 2
    edge_batch = cloud_batch = float(streams)
    for _ in range(60):
        first = _step_demands(plan, edge, cloud, link, prompt, prompt, False, edge_batch, cloud_batch)
        decode = _decode_demands(plan, edge, cloud, link, context, edge_batch, cloud_batch, depth, drafts)
        mean = _Demands.mix(first, decode, output)
        _, queued, arriving = mean.solve(streams)
        if streams == 1:
            break
        new_edge, new_cloud = (min(float(streams), max(1.0, q)) for q in queued[:2])
        if abs(new_edge - edge_batch) < 0.01 and abs(new_cloud - cloud_batch) < 0.01:
            break
        edge_batch, cloud_batch = (edge_batch + new_edge) / 2, (cloud_batch + new_cloud) / 2
    return first.time_among_ms(arriving, mean), decode.time_among_ms(arriving, mean), decode


def edge_memory_bytes(plan: Plan, edge: Profile, context: int, streams: int = 1) -> int:
    """Weights the edge must hold for the plan, and each stream's KV cache at `context` positions and peak
    activations."""
    blocks = [i for i in range(edge.num_layers) if i < plan.cut_a or i >= plan.cut_b or not plan.uses_cloud]
    embeds = plan.cut_a > 0 or not plan.uses_cloud
    weights = sum(edge.layer_weights_bytes[i] for i in blocks)
    if embeds:
        weights += edge.embed_weights_bytes
    if plan.head == "edge":
        weights += edge.head_weights_bytes or (0 if embeds else edge.embed_weights_bytes)  # a tied head needs them
    extra = edge.runtime(plan.edge_backend)
    if extra is not None:  # another runtime holds its own copy; the torch modules stay loaded to export new ranges
        weights += sum(extra.layer_weights_bytes[i] for i in blocks) + (extra.embed_weights_bytes if embeds else 0)
        weights += extra.head_weights_bytes if plan.head == "edge" else 0
    kv = sum(edge.kv_bytes_per_token[i] for i in blocks) * context
    activations = edge.peak_activation_bytes_per_token * context if blocks else 0  # a prefill of the whole context
    return int(weights + (kv + activations) * streams)


def predict(plan: Plan, edge: Profile, cloud: Profile, link: Link, workload: Workload, depth: int = 0,
            drafts: DraftProfile | None = None) -> Estimate:
    """What `plan` costs for `workload` with these profiles and this link; with `depth` drafts per round of the
    measured `drafts` when the plan can speculate (a plan that cannot decodes plainly)."""
    assert edge.num_layers == cloud.num_layers == plan.num_layers, "profiles and plan disagree on the model"
    edge_parts, cloud_parts = edge.on(plan.edge_backend), cloud.on(plan.cloud_backend)
    prompt, output, streams = workload.prompt_tokens, workload.output_tokens, workload.streams
    ttft, tpot, decode = _steady(plan, edge_parts, cloud_parts, link, workload, depth, drafts)
    memory = edge_memory_bytes(plan, edge, prompt + output, streams)
    if drafts is not None and depth > 0 and drafts.acceptance(plan) is not None:
        memory += drafts.weights_bytes  # the draft model's weights (its cache is small beside the plan's)
    return Estimate(time_to_first_token_ms=ttft, time_per_output_token_ms=tpot, total_ms=ttft + (output - 1) * tpot,
                    edge_memory_bytes=memory,
                    bytes_per_token=float(decode.bytes))
