"""Continuous batching: sessions batched together get exactly what each gets alone; nothing leaks between them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

import splitcore.batching as batching_module
from splitcore.batching import Batcher, BatchLimits
from splitcore.kvcache import TorchState
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.testing import reference_tokens
from tests.fakes import slowed_forwards

# (prompt length, new tokens, start delay in s): long prompts arrive while short ones decode, some end early
SESSIONS = [(3, 12, 0.0), (37, 6, 0.0), (9, 12, 0.02), (50, 3, 0.05), (1, 12, 0.0), (20, 1, 0.03), (14, 10, 0.08)]


class Rounds:
    """Records each forward's rows, and whether a round held decode steps and prompt chunks at once."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.mixed = False
        self._lock = threading.Lock()

    def __call__(self, rows: int, positions: int, waits: list[float], seconds: float) -> None:
        with self._lock:
            self.rows.append(rows)

    def packed(self, real: Callable[..., list[torch.Tensor]]) -> Callable[..., list[torch.Tensor]]:
        """Wraps `run_packed`: notes a forward whose groups held decode steps and prompt chunks at once."""
        def run(model: Any, layers: LayerRange, groups: list[Any]) -> list[torch.Tensor]:
            lengths = [n for g in groups for n in g.new]
            self.mixed |= min(lengths) == 1 and max(lengths) > 1
            return real(model, layers, groups)
        return run


def _greedy(batcher: Batcher, layers: LayerRange, prompt: list[int], n: int, delay: float) -> list[int]:
    time.sleep(delay)
    state, tokens = TorchState(), []
    ids = torch.tensor(prompt)
    for _ in range(n):
        _, logits = batcher.run(state, layers, input_ids=ids, head=True)
        assert logits is not None
        tokens.append(int(logits.argmax()))
        ids = torch.tensor(tokens[-1:])
    assert state.position == len(prompt) + n - 1
    return tokens


@pytest.mark.parametrize("family_name", ["gpt2", "llama", "qwen2", "mistral"])  # mistral: a short window
def test_sessions_batched_together_get_the_tokens_each_gets_alone(models: dict[str, LoadedModel],
                                                                  family_name: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = models[family_name]
    m = loaded.layered
    rounds = Rounds()
    monkeypatch.setattr(batching_module, "run_packed", rounds.packed(batching_module.run_packed))
    batcher = Batcher(m, BatchLimits(max_batch=8, max_tokens=64, prefill_chunk=8), observer=rounds)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, m.vocab_size, (n,), generator=gen).tolist() for n, _, _ in SESSIONS]
    everything = LayerRange(start=0, end=m.num_layers)
    with ThreadPoolExecutor(len(SESSIONS)) as pool:
        got = list(pool.map(lambda i: _greedy(batcher, everything, prompts[i], SESSIONS[i][1], SESSIONS[i][2]),
                            range(len(SESSIONS))))
    eos = loaded.tokenizer.eos_token_id  # type: ignore[union-attr]
    for prompt, tokens, (_, n, _) in zip(prompts, got, SESSIONS, strict=True):
        until_eos = tokens[:tokens.index(eos) + 1] if eos in tokens else tokens  # where generate() stops
        assert until_eos == reference_tokens(loaded, prompt, n)
    assert max(rounds.rows) > 1, "the sessions never shared a forward"
    assert rounds.mixed, "no forward held decode steps and prompt chunks together"
    assert batcher.waiting == 0
    assert batcher.drop_idle() == 1  # every session ended: the running batch's storage is freed


def test_a_split_range_batches_hidden_states_exactly(models: dict[str, LoadedModel]) -> None:
    """Mid-model rows (hidden states in, no head): each row's output equals its run alone, at different cache
    lengths and different numbers of new positions."""
    m = models["llama"].layered
    layers = LayerRange(start=1, end=3)
    alone, batched = Batcher(m), Batcher(m, BatchLimits(prefill_chunk=4))
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randn(n, m.hidden_size, generator=gen) for n in (2, 11, 5)]
    states_alone = [TorchState() for _ in prompts]
    states_batched = [TorchState() for _ in prompts]
    expected = [alone.run(s, layers, hidden=p)[0] for s, p in zip(states_alone, prompts, strict=True)]
    futures = [batched.submit(s, layers, hidden=p) for s, p in zip(states_batched, prompts, strict=True)]
    got = [batched.wait(f)[0] for f in futures]
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    step = torch.randn(1, m.hidden_size, generator=gen)
    expected = [alone.run(s, layers, hidden=step)[0] for s in states_alone]
    got = [batched.wait(f)[0] for f in [batched.submit(s, layers, hidden=step) for s in states_batched]]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    assert [s.position for s in states_batched] == [3, 12, 6]


def test_a_long_prompt_runs_in_chunks_between_decode_steps(models: dict[str, LoadedModel],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A 40-position prompt with chunks of 8 runs in five forwards; a decode step queued meanwhile joins the
    next chunk's forward (one forward of 9 positions: packed, no padding) instead of waiting for the whole
    prompt."""
    m = models["gpt2"].layered
    calls: list[tuple[int, int]] = []  # (rows, positions) per forward
    slowed_forwards(monkeypatch, 0.02)
    batcher = Batcher(m, BatchLimits(prefill_chunk=8, max_tokens=64),
                      observer=lambda rows, positions, waits, seconds: calls.append((rows, positions)))
    everything = LayerRange(start=0, end=m.num_layers)
    running = TorchState()
    batcher.run(running, everything, input_ids=torch.tensor([5, 6]))
    calls.clear()
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(batcher.run, TorchState(), everything, input_ids=torch.arange(1, 41))
        time.sleep(0.005)  # the prompt's first chunk is running
        batcher.run(running, everything, input_ids=torch.tensor([7]))
        assert not long.done(), "the decode step waited for the whole prompt"
        assert long.result(timeout=5)[0].shape == (1, 40, m.hidden_size)
    assert (2, 9) in calls[:-1], f"the decode step did not share a chunk's forward: {calls}"
    assert len(calls) == 5 and sum(n for _, n in calls) == 41 and max(n for _, n in calls) == 9


def test_a_cancelled_or_failing_step_leaves_the_others_alone(models: dict[str, LoadedModel],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    m = models["gpt2"].layered
    everything = LayerRange(start=0, end=m.num_layers)
    gate = threading.Event()
    real = batching_module.forward_rows

    def held(model, layers, rows, embed, head=None):  # noqa: ANN001, ANN202
        gate.wait(5)
        if any(r.input_ids is not None and int(r.input_ids[0]) == 99 for r in rows):
            raise RuntimeError("injected failure")
        return real(model, layers, rows, embed, head)
    monkeypatch.setattr(batching_module, "forward_rows", held)
    batcher = Batcher(m)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(batcher.run, TorchState(), everything, input_ids=torch.tensor([1, 2]))  # runs, held
        time.sleep(0.05)
        cancelled = batcher.submit(TorchState(), everything, input_ids=torch.tensor([3]))
        assert cancelled.cancel()
        kept_state = TorchState()
        kept = batcher.submit(kept_state, everything, input_ids=torch.tensor([4, 5, 6]))
        gate.set()
        first.result(timeout=5)
    assert batcher.wait(kept)[0].shape == (1, 3, m.hidden_size) and kept_state.position == 3
    failing = batcher.submit(TorchState(), LayerRange(start=0, end=1), input_ids=torch.tensor([99]))
    with pytest.raises(RuntimeError, match="injected"):
        batcher.wait(failing)
    after = batcher.run(kept_state, everything, input_ids=torch.tensor([7]))  # the batcher lives on
    assert after[0].shape == (1, 1, m.hidden_size) and batcher.waiting == 0


def test_a_decode_step_appends_in_place_without_copying_the_cache() -> None:
    """A session's keys grow into spare capacity: the storage is reused until it is full, then doubled."""
    state = TorchState()
    kv = state.kv
    kv.append(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    storage = kv.keys[0].data_ptr()
    for _ in range(61):
        kv.append(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert kv.keys[0].data_ptr() == storage and kv.lengths[0] == 64
    kv.append(0, torch.full((1, 2, 1, 4), 2.0), torch.zeros(1, 2, 1, 4))
    keys, _ = kv.view(0)  # type: ignore[misc]
    assert keys.shape == (1, 2, 65, 4) and kv.keys[0].shape[2] == 128
    assert float(keys[0, 0, :3].mean()) == 1.0 and float(keys[0, 0, 64].mean()) == 2.0
    assert kv.valid_nbytes == 2 * 65 * 2 * 4 * 4


def test_a_session_alone_on_its_range_decodes_unbatched_and_joins_the_running_batch_when_others_come(
        models: dict[str, LoadedModel]) -> None:
    """Alone, a session's decode steps run on its own cache (the batcher costs it nothing); with a second session
    both share the running batch; once the other has ended, the first leaves it again and stays exact."""
    m = models["gpt2"].layered
    everything = LayerRange(start=0, end=m.num_layers)
    batcher, alone = Batcher(m), Batcher(m)
    a, a_alone = TorchState(), TorchState()
    for ids in ([1, 2, 3], [4], [5]):
        got = batcher.run(a, everything, input_ids=torch.tensor(ids))[0]
        torch.testing.assert_close(got, alone.run(a_alone, everything, input_ids=torch.tensor(ids))[0])
    assert a.slot is None and not batcher._running  # noqa: SLF001 (no running batch for a lone session)
    b = TorchState()
    batcher.run(b, everything, input_ids=torch.tensor([6, 7]))
    futures = [batcher.submit(a, everything, input_ids=torch.tensor([8])),
               batcher.submit(b, everything, input_ids=torch.tensor([9]))]
    got = [batcher.wait(f)[0] for f in futures][0]
    torch.testing.assert_close(got, alone.run(a_alone, everything, input_ids=torch.tensor([8]))[0],
                               rtol=1e-4, atol=1e-4)
    assert a.slot is not None and b.slot is not None  # decoding together: both in the running batch
    del b, futures  # the other session ends
    got = batcher.run(a, everything, input_ids=torch.tensor([10]))[0]
    torch.testing.assert_close(got, alone.run(a_alone, everything, input_ids=torch.tensor([10]))[0],
                               rtol=1e-4, atol=1e-4)
    assert a.slot is None and a.position == a_alone.position == 7


def test_a_small_forward_runs_on_one_thread_and_a_large_one_on_all(models: dict[str, LoadedModel],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = models["gpt2"]
    layers = LayerRange(start=0, end=loaded.layered.num_layers)
    block = sum(p.numel() for p in loaded.layered.blocks[0].parameters())
    batcher = Batcher(loaded.layered, BatchLimits(one_thread_below=8 * block))  # under 8 positions: one thread
    seen: list[int] = []
    compute = batcher._compute

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return compute(*args, **kwargs)

    monkeypatch.setattr(batcher, "_compute", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        state = TorchState()
        batcher.run(state, layers, input_ids=torch.arange(4, 20))  # 16 positions: every thread
        batcher.run(state, layers, input_ids=torch.tensor([7]))  # one: one thread
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1] and after == 2
