"""Shard backends: a tier runs its layer ranges with PyTorch or ONNX Runtime behind one interface.

`Runner.run(state, layers, hidden=|input_ids=)` embeds when given token ids, runs blocks `layers` over the
session's own KV cache and returns hidden states `(1, seq, hidden)`; `Runner.run_head` does the same and then
runs the final norm and head on the last position. The torch runner sends every step through one `Batcher`
(`splitcore.batching`), so steps of sessions running at once share a forward. The ONNX Runtime runner loads
the ranges exported by `splitcore.onnx_export` (once per range, cached on disk) into `InferenceSession`s and
keeps each block's KV cache as numpy arrays that go in as `past_*` and come back as `present_*`; its graphs take
one session at a time, so ONNX Runtime steps run unbatched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, get_args

import numpy as np
import onnxruntime
import torch

from splitcore.batched import Row, forward_rows, step_input
from splitcore.batching import Batcher, BatchLimits, BatchObserver, Result
from splitcore.kvcache import TorchState
from splitcore.layered import LayeredModel
from splitcore.onnx_export import ExportCache, kv_shape, range_names
from splitcore.plan import BackendName
from splitcore.ranges import LayerRange

BACKENDS: tuple[BackendName, ...] = get_args(BackendName)


@dataclass
class OrtState:
    """One session's state on one tier for ONNX Runtime: each block's key and value cache as arrays."""

    kv: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # block -> (1, kv_heads, pos, dim)
    position: int = 0
    cache_bytes: int = 0

    def truncate(self, position: int) -> None:
        """Roll back to `position` positions (at most the held ones)."""
        assert 0 <= position <= self.position, f"cannot roll back to {position} from {self.position}"
        self.kv = {i: (k[:, :, :position], v[:, :, :position]) for i, (k, v) in self.kv.items()}
        self.position = position

    def measure(self) -> int:
        """Recount the bytes held by the cache arrays."""
        self.cache_bytes = sum(k.nbytes + v.nbytes for k, v in self.kv.values())
        return self.cache_bytes


State = TorchState | OrtState


class Runner(Protocol):
    """What a tier needs to run its part of a step, whatever the runtime."""

    name: BackendName
    model: LayeredModel

    def new_state(self) -> State: ...

    def run(self, state: State, layers: LayerRange, hidden: torch.Tensor | None = None,
            input_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def run_head(self, state: State, layers: LayerRange, hidden: torch.Tensor | None = None,
                 input_ids: torch.Tensor | None = None) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def logits_all(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def rollback(self, state: State, position: int) -> None: ...

    def prepare(self, layers: LayerRange, embed: bool) -> None: ...


class TorchRunner:
    """The `transformers` modules themselves, every step through one continuous batcher."""

    name: BackendName = "torch"

    def __init__(self, model: LayeredModel, limits: BatchLimits | None = None,
                 observer: BatchObserver | None = None, batched: bool = True) -> None:
        self.model = model
        # Unbatched, a step runs in the caller's thread: what the profiler times, free of the hand-off.
        self.batcher = Batcher(model, limits, observer) if batched else None

    def _run(self, state: State, layers: LayerRange, hidden: torch.Tensor | None, input_ids: torch.Tensor | None,
             head: bool) -> Result:
        assert isinstance(state, TorchState), "a torch runner needs a torch session state"
        if self.batcher is not None:
            return self.batcher.run(state, layers, hidden=hidden, input_ids=input_ids, head=head)
        x, embed = step_input(self.model, hidden, input_ids)
        outs, logits = forward_rows(self.model, layers, [Row.of(state, x, embed)], embed, [head])
        return outs[0], logits

    def new_state(self) -> TorchState:
        return TorchState()

    def run(self, state: State, layers: LayerRange, hidden: torch.Tensor | None = None,
            input_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(state, layers, hidden, input_ids, head=False)[0]

    def run_head(self, state: State, layers: LayerRange, hidden: torch.Tensor | None = None,
                 input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run `layers`, then the final norm and head on the last position: logits (1, vocab)."""
        logits = self._run(state, layers, hidden, input_ids, head=True)[1]
        assert logits is not None
        return logits

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.logits(hidden)

    @torch.inference_mode()
    def logits_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of every position `(seq, vocab)` of hidden states `(1, seq, hidden)`."""
        return self.model.logits_all(hidden)

    def rollback(self, state: State, position: int) -> None:
        """Drop the session's positions from `position` on (speculation's rejected drafts)."""
        assert isinstance(state, TorchState), "a torch runner needs a torch session state"
        if self.batcher is not None:
            self.batcher.truncate(state, position)
        else:
            state.truncate(position)

    def prepare(self, layers: LayerRange, embed: bool) -> None:
        """Nothing to build: the modules are already in memory."""


class OrtRunner:
    """Exported ranges in ONNX Runtime sessions (CPU, or the first provider available in this build)."""

    name: BackendName = "onnxruntime"

    def __init__(self, model: LayeredModel, exports: ExportCache, quantize: bool = False,
                 threads: int | None = None) -> None:
        self.model = model
        self.exports = exports
        self.quantize = quantize  # int8 weights (onnxruntime's dynamic quantisation)
        self.threads = threads or torch.get_num_threads()
        self._sessions: dict[tuple[int, int, bool], onnxruntime.InferenceSession] = {}
        self._head: onnxruntime.InferenceSession | None = None
        self._lock = threading.Lock()  # one export and load per range, however many sessions ask at once
        self._empty = np.zeros(kv_shape(model, 0), dtype=np.float32)  # the past of a session's first step

    def new_state(self) -> OrtState:
        return OrtState()

    def run(self, state: State, layers: LayerRange, hidden: torch.Tensor | None = None,
            input_ids: torch.Tensor | None = None) -> torch.Tensor:
        assert isinstance(state, OrtState), "an ONNX Runtime runner needs an ONNX Runtime session state"
        assert (hidden is None) != (input_ids is None), "pass exactly one of hidden states or token ids"
        embed = input_ids is not None
        if input_ids is not None:
            x = input_ids.reshape(1, -1).to(torch.int64).numpy()  # (1, seq)
        else:
            assert hidden is not None
            x = np.ascontiguousarray(hidden.reshape(1, -1, self.model.hidden_size).float().numpy())  # (1, seq, hid)
            if len(layers) == 0:
                return torch.from_numpy(x)
        seq = x.shape[1]
        feed: dict[str, np.ndarray] = {
            "x": x, "position_ids": np.arange(state.position, state.position + seq, dtype=np.int64)[None]}
        inputs, _ = range_names(layers)
        for i, (k_name, v_name) in zip(layers, zip(inputs[2::2], inputs[3::2], strict=True), strict=True):
            assert i in state.kv or state.position == 0, f"block {i} has no cache at position {state.position}"
            feed[k_name], feed[v_name] = state.kv.get(i, (self._empty, self._empty))
        outputs = self._session(layers, embed).run(None, feed)
        for j, i in enumerate(layers):
            state.kv[i] = (outputs[1 + 2 * j], outputs[2 + 2 * j])
        state.position += seq
        return torch.from_numpy(outputs[0])  # (1, seq, hidden)

    def run_head(self, state: State, layers: LayerRange, hidden: torch.Tensor | None = None,
                 input_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.run(state, layers, hidden=hidden, input_ids=input_ids))

    def logits_all(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of every position `(seq, vocab)`: the exported head takes one position, so one run each."""
        return torch.cat([self.logits(hidden[:, i:i + 1]) for i in range(hidden.shape[1])])

    def rollback(self, state: State, position: int) -> None:
        """Drop the session's positions from `position` on (speculation's rejected drafts)."""
        assert isinstance(state, OrtState), "an ONNX Runtime runner needs an ONNX Runtime session state"
        state.truncate(position)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        last = np.ascontiguousarray(hidden[:, -1:, :].float().numpy())  # (1, 1, hidden)
        return torch.from_numpy(self._head_session().run(None, {"hidden": last})[0])  # (1, vocab)

    def _head_session(self) -> onnxruntime.InferenceSession:
        if self._head is None:
            with self._lock:
                if self._head is None:
                    self._head = self._load(self.exports.head(self.model, self.quantize))
        return self._head

    def prepare(self, layers: LayerRange, embed: bool) -> None:
        """Export (if not on disk) and load a range and the head now, so the first step does not wait for them."""
        if len(layers) or embed:
            self._session(layers, embed)
        self._head_session()

    def _session(self, layers: LayerRange, embed: bool) -> onnxruntime.InferenceSession:
        key = (layers.start, layers.end, embed)
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    session = self._sessions[key] = self._load(
                        self.exports.range(self.model, layers, embed, self.quantize))
        return session

    def _load(self, path: Path) -> onnxruntime.InferenceSession:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Threads spinning between ops burn the cores the other tier and the HTTP server share with them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(str(path), options, providers=onnxruntime.get_available_providers())


class Runners:
    """One tier's runners by backend name, built on first use; `default` is the tier's `--backend`."""

    def __init__(self, model: LayeredModel, default: BackendName = "torch", onnx_dir: Path | None = None,
                 quantize: bool = False, batching: BatchLimits | None = None,
                 observer: BatchObserver | None = None) -> None:
        self.model = model
        self.batching = batching  # the torch runner's batch limits (None: the defaults)
        self.observer = observer  # told of each batch the torch runner runs
        self.default: BackendName = default
        self.exports = ExportCache(onnx_dir or default_onnx_dir())
        self.quantize = quantize
        self._built: dict[BackendName, Runner] = {}
        self._lock = threading.Lock()

    @property
    def batcher(self) -> Batcher | None:
        """The torch runner's batcher (None when it runs unbatched)."""
        runner = self.get("torch")
        assert isinstance(runner, TorchRunner)
        return runner.batcher

    def get(self, name: BackendName | None = None) -> Runner:
        """The runner for `name` (None: the tier's default)."""
        name = name or self.default
        with self._lock:
            if name not in self._built:
                self._built[name] = (TorchRunner(self.model, self.batching, self.observer) if name == "torch"
                                     else OrtRunner(self.model, self.exports, self.quantize))
            return self._built[name]


def default_onnx_dir() -> Path:
    """Where exports are cached unless a service says otherwise."""
    return Path.home() / ".cache" / "edgesplit" / "onnx"
