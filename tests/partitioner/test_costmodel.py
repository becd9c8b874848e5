"""The cost model on hand-built profiles: exact expected figures."""

from __future__ import annotations

import pytest

from partitioner.costmodel import HTTP_BYTES, Workload, edge_memory_bytes, predict
from profiling.acceptance import DraftProfile
from profiling.link_estimator import Link
from profiling.profile import BATCH_CONTEXT, PartCost
from profiling.synthetic import synthetic_profile
from splitcore.errors import UserError
from splitcore.plan import Plan
from splitcore.wire import HEADER_BYTES

EDGE = synthetic_profile("edge", [10.0] * 4, hidden_size=100, prefill_per_token=0.5, head_ms=2.0)
CLOUD = synthetic_profile("cloud", [1.0] * 4, hidden_size=100, prefill_per_token=0.5, head_ms=0.5)
LINK = Link(bandwidth_bps=8_000_000, rtt_ms=20.0, overhead_ms=1.0)  # 1 byte per microsecond
ONE_TOKEN = Workload(prompt_tokens=16, output_tokens=1)


def test_edge_only_costs_the_edge_blocks_and_head_and_moves_nothing() -> None:
    est = predict(Plan(num_layers=4, cut_a=4, cut_b=4), EDGE, CLOUD, LINK, Workload(prompt_tokens=16, output_tokens=9))
    embed_decode = EDGE.embed.decode_at(20)
    head = 2.0 * (1 + 0.2 * 4 / 496)  # head and blocks: 1.2x their cost at 512 positions, linear from 16
    assert est.time_per_output_token_ms == pytest.approx(embed_decode + 4 * 10.0 * (1 + 0.2 * 4 / 496) + head)
    assert est.bytes_per_token == 0.0


def test_a_decode_step_through_the_cloud_pays_the_round_trip_and_its_bytes() -> None:
    plan = Plan(num_layers=4, cut_a=1, cut_b=3, codec="int8")
    est = predict(plan, EDGE, CLOUD, LINK, Workload(prompt_tokens=16, output_tokens=1))
    frame = 100 + 4 + HEADER_BYTES + HTTP_BYTES  # one int8 row with its scale, header and HTTP
    assert est.bytes_per_token == 2 * frame
    compute = EDGE.embed.decode_at(16) + 2 * 10.0 + 2 * 1.0 + 2.0  # decode at context 16 (no interpolation)
    assert est.time_per_output_token_ms == pytest.approx(compute + 20.0 + 1.0 + 2 * frame / 1000)


def test_the_cloud_head_answers_with_a_token_and_a_zero_cut_sends_tokens() -> None:
    plan = Plan(num_layers=4, cut_a=0, cut_b=4, head="cloud", codec="fp32")
    est = predict(plan, EDGE, CLOUD, LINK, ONE_TOKEN)
    assert est.bytes_per_token == 2 * (4 + HEADER_BYTES + HTTP_BYTES)
    assert est.edge_memory_bytes == 0


def test_device_memory_counts_the_edge_blocks_embeddings_and_cache() -> None:
    plan = Plan(num_layers=4, cut_a=1, cut_b=3)
    kv = 2 * EDGE.kv_bytes_per_token[0] * 100
    activations = EDGE.peak_activation_bytes_per_token * 100
    expected = EDGE.embed_weights_bytes + 2 * EDGE.layer_weights_bytes[0] + kv + activations
    assert edge_memory_bytes(plan, EDGE, 100) == expected


def test_interpolation_is_linear_between_and_beyond_measured_points() -> None:
    cost = PartCost(prefill_ms={16: 1.0, 64: 4.0}, decode_ms={16: 1.0, 512: 2.0})
    assert cost.prefill_at(40) == pytest.approx(2.5)
    assert cost.prefill_at(112) == pytest.approx(7.0)
    assert cost.decode_at(4) == pytest.approx(1.0 - 12 / 496)


def test_measured_compression_shrinks_prefill_frames_and_costs_codec_time() -> None:
    from profiling.profile import CodecCost

    cost = CodecCost(prefill_ratio=0.5, decode_ratio=1.0, encode_ms_per_mib=100.0, decode_ms_per_mib=50.0)
    edge = EDGE.model_copy(update={"codecs": {"fp32": {3: cost}}})
    cloud = CLOUD.model_copy(update={"codecs": {"fp32": {3: cost}}})
    plain = Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32", zstd_level=1)  # no figures for level 1: raw
    zipped = Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32", zstd_level=3)
    workload = Workload(prompt_tokens=256, output_tokens=2)
    a, b = predict(plain, edge, cloud, LINK, workload), predict(zipped, edge, cloud, LINK, workload)
    raw = 256 * 100 * 4  # bytes of one prefill frame's payload
    mib = raw / 2**20
    # half the payload each way saves its transfer time, and costs encode + decode on both frames
    saved_ms = 2 * (raw / 2) * 8 / LINK.bandwidth_bps * 1000
    assert b.time_to_first_token_ms == pytest.approx(a.time_to_first_token_ms - saved_ms + 2 * 150.0 * mib)
    assert b.bytes_per_token == a.bytes_per_token  # one-position frames do not compress (decode ratio 1.0)


def test_a_workload_parses_from_prompt_and_output_tokens() -> None:
    assert Workload.parse("128:32") == Workload(prompt_tokens=128, output_tokens=32)
    assert Workload.parse("256") == Workload(prompt_tokens=256, output_tokens=64)
    assert Workload.parse("64:32:4") == Workload(prompt_tokens=64, output_tokens=32, streams=4)
    with pytest.raises(UserError, match="STREAMS"):
        Workload.parse("64:32:0")


LONG = Workload(prompt_tokens=16, output_tokens=1000)  # the prompt is a tenth of a percent of a stream's work


def test_streams_queue_at_a_tier_they_all_need() -> None:
    """Edge-only, nothing batches: every stream needs the edge's one core, so N streams make each step N times as
    long (a prompt now and then adds its share: well under 1% here)."""
    plan = Plan(num_layers=4, cut_a=4, cut_b=4)
    one = predict(plan, EDGE, CLOUD, LINK, LONG).time_per_output_token_ms
    four = predict(plan, EDGE, CLOUD, LINK, LONG.model_copy(update={"streams": 4})).time_per_output_token_ms
    assert four == pytest.approx(4 * one, rel=0.01)


def test_a_prompt_waits_behind_the_other_streams_decode_steps_and_they_behind_it() -> None:
    """A served load: prompts interleave with decode steps, so short generations of long prompts slow every
    stream's decode steps, and a prompt waits behind decode steps, not behind other prompts."""
    plan = Plan(num_layers=4, cut_a=4, cut_b=4)
    short = Workload(prompt_tokens=256, output_tokens=4, streams=4)
    long = short.model_copy(update={"output_tokens": 400})
    assert predict(plan, EDGE, CLOUD, LINK, short).time_per_output_token_ms > (
        1.5 * predict(plan, EDGE, CLOUD, LINK, long).time_per_output_token_ms)
    alone = predict(plan, EDGE, CLOUD, LINK, long.model_copy(update={"streams": 1}))
    crowded = predict(plan, EDGE, CLOUD, LINK, long)
    assert crowded.time_to_first_token_ms == pytest.approx(
        alone.time_to_first_token_ms + 3 * alone.time_per_output_token_ms, rel=0.05)


def test_batched_decode_rounds_make_streams_cheaper_than_their_sum() -> None:
    """Cloud-only on a cloud whose round of n sessions costs what the profile says: 16 streams on a round that
    costs 2x one session's step give each stream far less than 16x its lone time per token."""
    rounds = {1: 1.0, 4: 1.2, 16: 2.0, 64: 6.0}
    cloud = synthetic_profile("cloud", [1.0] * 4, hidden_size=100, head_ms=0.5, batch_rounds=rounds)
    plan, link = Plan(num_layers=4, cut_a=0, cut_b=4, head="cloud", codec="fp32"), Link(bandwidth_bps=1e9, rtt_ms=0)
    work = Workload(prompt_tokens=16, output_tokens=1000)
    one = predict(plan, EDGE, cloud, link, work).time_per_output_token_ms
    many = predict(plan, EDGE, cloud, link, work.model_copy(update={"streams": 16})).time_per_output_token_ms
    unbatched = predict(plan, EDGE, CLOUD, link, work.model_copy(update={"streams": 16})).time_per_output_token_ms
    assert one == pytest.approx(predict(plan, EDGE, CLOUD, link, work).time_per_output_token_ms)  # alone: the same
    assert many == pytest.approx(2.0 * one, rel=0.1)  # every stream in each round: one round of 16 per token
    assert unbatched == pytest.approx(16 * one, rel=0.02)
    lone = cloud.layers[0].decode_at(BATCH_CONTEXT)  # a session alone decodes unbatched: the share's base
    assert cloud.layers[0].batch_share(16) == pytest.approx(2.0 / (16 * lone))
    assert cloud.layers[0].batch_share(1000) == pytest.approx(6.0 / (64 * lone))  # past the largest round measured


def test_the_cloud_services_own_cost_per_request_queues_and_shrinks_in_a_batch() -> None:
    plan, link = Plan(num_layers=4, cut_a=0, cut_b=4, head="cloud", codec="fp32"), Link(bandwidth_bps=1e9, rtt_ms=0)
    work = Workload(prompt_tokens=16, output_tokens=1000)
    rounds = {1: 1.0, 64: 1.0}  # a free batch: only the requests' own cost grows with the streams
    cloud = synthetic_profile("cloud", [1.0] * 4, hidden_size=100, head_ms=0.5, batch_rounds=rounds)
    served = cloud.model_copy(update={"request_ms": 3.0, "request_busy_ms": 1.0})
    one, base = (predict(plan, EDGE, c, link, work).time_per_output_token_ms for c in (served, cloud))
    assert one == pytest.approx(base + 3.0)
    # 3 ms alone, 1 ms each among 16: a 32/15 ms part per round shared by its requests, 13/15 ms per request
    assert served.request_cost_ms(16) == pytest.approx(1.0) and served.request_cost_ms(1) == 3.0
    eight = predict(plan, EDGE, served, link, work.model_copy(update={"streams": 8})).time_per_output_token_ms
    assert eight == pytest.approx(base + 8 * (13 / 15 + 32 / 15 / 8), rel=0.05)


def test_the_round_trip_overlaps_with_other_streams_compute() -> None:
    """Cloud-only with a long round trip: four streams fit in the time one spends on the wire (MVA by hand)."""
    plan = Plan(num_layers=4, cut_a=0, cut_b=4, head="cloud", codec="fp32")
    slow = LINK.model_copy(update={"rtt_ms": 200.0})
    one = predict(plan, EDGE, CLOUD, slow, LONG).time_per_output_token_ms
    four = predict(plan, EDGE, CLOUD, slow, LONG.model_copy(update={"streams": 4})).time_per_output_token_ms
    assert 4 * 4.5 < one < four < one * 1.1  # the cloud (4.5 ms a step) is far from busy: little queueing


def test_with_several_streams_a_balanced_middle_cut_beats_both_ends() -> None:
    """One stream: some end of the model wins (the cost is linear in the cut). Four: the edge and the cloud work
    on different streams at once, so a cut that shares the blocks out beats edge-only and cloud-only."""
    edge = synthetic_profile("edge", [3.0] * 12, hidden_size=100, head_ms=0.5)
    cloud = synthetic_profile("cloud", [1.0] * 12, hidden_size=100, head_ms=6.0)
    link = Link(bandwidth_bps=1e9, rtt_ms=1.0)

    def tpot(plan: Plan, streams: int) -> float:
        work = Workload(prompt_tokens=16, output_tokens=8, streams=streams)
        return predict(plan, edge, cloud, link, work).time_per_output_token_ms

    ends = [Plan(num_layers=12, cut_a=12, cut_b=12), Plan(num_layers=12, cut_a=0, cut_b=12, head="cloud")]
    middles = [Plan(num_layers=12, cut_a=a, cut_b=12, head="cloud") for a in range(1, 12)]
    assert min(tpot(p, 1) for p in ends) <= min(tpot(p, 1) for p in middles)
    best_middle = min(middles, key=lambda p: tpot(p, 4))
    assert 2 <= best_middle.cut_a <= 6
    assert tpot(best_middle, 4) < 0.9 * min(tpot(p, 4) for p in ends)


def test_a_plan_is_costed_on_the_runtime_it_names_and_pays_for_that_runtimes_weights() -> None:
    from profiling.synthetic import synthetic_profile, with_runtime
    from splitcore.errors import PlanError

    edge = with_runtime(synthetic_profile("edge", [4.0] * 4), "onnxruntime", speedup=2.0, weights_bytes=1000)
    cloud = synthetic_profile("cloud", [1.0] * 4)
    link, workload = Link(bandwidth_bps=1e9, rtt_ms=1), Workload(prompt_tokens=16, output_tokens=8)
    on_torch = predict(Plan(num_layers=4, cut_a=4, cut_b=4), edge, cloud, link, workload)
    on_ort = predict(Plan(num_layers=4, cut_a=4, cut_b=4, edge_backend="onnxruntime"), edge, cloud, link, workload)
    assert on_ort.time_per_output_token_ms == pytest.approx(
        (on_torch.time_per_output_token_ms - 0) / 2, rel=1e-9)  # every part of an edge-only step is 2x faster
    assert on_ort.edge_memory_bytes == on_torch.edge_memory_bytes + 4 * 1000 + 1000  # blocks and embeddings
    with pytest.raises(PlanError, match="no figures for 'onnxruntime'"):
        predict(Plan(num_layers=4, cut_a=2, cut_b=4, cloud_backend="onnxruntime"), edge, cloud, link, workload)


def test_the_edges_own_software_per_exchange_is_paid_by_split_steps_only() -> None:
    work = Workload(prompt_tokens=16, output_tokens=1000)
    busy_edge = EDGE.model_copy(update={"request_ms": 2.0})
    split = Plan(num_layers=4, cut_a=1, cut_b=3, codec="int8")
    alone = Plan(num_layers=4, cut_a=4, cut_b=4)
    for plan, extra in ((split, 2.0), (alone, 0.0)):
        assert predict(plan, busy_edge, CLOUD, LINK, work).time_per_output_token_ms == pytest.approx(
            predict(plan, EDGE, CLOUD, LINK, work).time_per_output_token_ms + extra)


def _drafts(accept: float, draft_ms: float | None = None) -> DraftProfile:
    cuts = {f"{a}:{b}": [accept] * 8 for a in range(1, 3) for b in range(a + 1, 4)}
    return DraftProfile(source="self" if draft_ms is None else "draft", accept_by_cut=cuts, accept=[accept] * 8,
                        draft_ms=draft_ms, tokens=100, weights_bytes=0 if draft_ms is None else 1_000_000)


@pytest.mark.parametrize("draft_ms", [None, 1.0])
def test_a_speculative_round_pays_one_round_trip_for_every_token_it_gives(draft_ms: float | None) -> None:
    plan, work = Plan(num_layers=4, cut_a=1, cut_b=3, codec="int8"), Workload(prompt_tokens=16, output_tokens=33)
    fast, slow = (Link(bandwidth_bps=1e12, rtt_ms=rtt) for rtt in (10.0, 110.0))
    sure = _drafts(1.0, draft_ms)
    for depth in (1, 3, 7):  # every draft accepted: depth + 1 tokens per round, so per round trip
        gap = (predict(plan, EDGE, CLOUD, slow, work, depth, sure).time_per_output_token_ms
               - predict(plan, EDGE, CLOUD, fast, work, depth, sure).time_per_output_token_ms)
        assert gap == pytest.approx(100.0 / (depth + 1))
    plain = predict(plan, EDGE, CLOUD, slow, work).time_per_output_token_ms
    assert predict(plan, EDGE, CLOUD, slow, work, 0, sure).time_per_output_token_ms == plain  # depth 0: plain
    assert predict(plan, EDGE, CLOUD, slow, work, 3, sure).time_per_output_token_ms < plain / 2
    # drafts never accepted give one token per round and cost their drafting and the wider verify
    assert predict(plan, EDGE, CLOUD, slow, work, 3, _drafts(0.0, draft_ms)).time_per_output_token_ms > plain


def test_plans_that_cannot_draft_decode_plainly_and_a_draft_model_counts_on_the_device() -> None:
    work, sure = Workload(prompt_tokens=16, output_tokens=9), _drafts(1.0, 1.0)
    for plan in (Plan(num_layers=4, cut_a=4, cut_b=4), Plan(num_layers=4, cut_a=1, cut_b=4)):
        assert predict(plan, EDGE, CLOUD, LINK, work, 4, sure) == predict(plan, EDGE, CLOUD, LINK, work)
    split = Plan(num_layers=4, cut_a=1, cut_b=3)
    assert (predict(split, EDGE, CLOUD, LINK, work, 4, sure).edge_memory_bytes
            == predict(split, EDGE, CLOUD, LINK, work).edge_memory_bytes + 1_000_000)
    assert (predict(split, EDGE, CLOUD, LINK, work, 4, _drafts(1.0)).edge_memory_bytes
            == predict(split, EDGE, CLOUD, LINK, work).edge_memory_bytes)  # self: no extra weights
