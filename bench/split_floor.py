"""What two processes cost a split decode step on this machine, with no service in the way (issue 17's floor).

    python bench/split_floor.py                        # the shipped model (2:6) and the 124M model (6:12)
    python bench/split_floor.py --models default --repeats 9

The same blocks the services run (`splitcore.backends.TorchRunner`, unbatched, one intra-op thread as the
services use for one-row steps), greedy decoding, in three ways, alternating so the machine's drift falls on all
alike:

- **one process**: the edge's front blocks, the cloud's blocks, the edge's back blocks and head, one after the
  other;
- **two processes, blocking**: the cloud's blocks in a second process (started by this script), each step's
  hidden state (fp32, no codec) sent over a plain TCP socket (`TCP_NODELAY`) and the answer read with a blocking
  `recv`, as any server waits;
- **two processes, busy-polling**: the same, both sides polling a non-blocking socket instead of sleeping in
  `recv` (a core each spent waiting).

No HTTP, WebSocket, asyncio, codec, batcher or session bookkeeping: what the two-process split costs over one
process here is a floor for any implementation of the split on this machine. `bench/step_overhead.py` measures
the services themselves against edge-only; README ("Per-step overhead") sets the two side by side. The three
ways must produce the same tokens (checked).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from splitcore.openmp import openmp_env

os.environ.update(openmp_env())  # this process plays a tier: its OpenMP threads idle as the services' do

import torch  # noqa: E402 (after the OpenMP setting)

from edgesplit.procs import free_port  # noqa: E402
from edgesplit.tools.checkpoints import model_dir  # noqa: E402
from edgesplit.tools.reports import write_report  # noqa: E402
from splitcore.backends import TorchRunner  # noqa: E402
from splitcore.loading import load_checkpoint  # noqa: E402
from splitcore.ranges import LayerRange  # noqa: E402

CUTS = {"default": (2, 6), "gpt2-small-shaped": (6, 12)}
_HEADER = struct.Struct("<III")  # new session (0/1), elements, busy-poll (0/1)


def _recv_exact(sock: socket.socket, n: int, spin: bool) -> bytes:
    """`n` bytes from `sock`: a blocking read, or one that polls the non-blocking socket until they are in."""
    buf = bytearray()
    while len(buf) < n:
        if spin:
            try:
                data = sock.recv(n - len(buf), socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
        else:
            data = sock.recv(n - len(buf))
        if not data:
            raise EOFError
        buf += data
    return bytes(buf)


def _serve_cloud(path: str, start: int, end: int, port: int) -> None:
    """The cloud's blocks [start, end): answer each hidden state with theirs, one connection at a time."""
    torch.set_num_threads(1)
    runner = TorchRunner(load_checkpoint(Path(path)).layered, batched=False)
    layers = LayerRange(start=start, end=end)
    with socket.create_server(("127.0.0.1", port)) as server:
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                state = runner.new_state()
                spin = False
                while True:
                    try:
                        fresh, elements, spin_flag = _HEADER.unpack(_recv_exact(conn, _HEADER.size, spin))
                        spin = bool(spin_flag)
                        x = torch.frombuffer(bytearray(_recv_exact(conn, elements * 4, spin)), dtype=torch.float32)
                    except EOFError:
                        break
                    if fresh:
                        state = runner.new_state()
                    with torch.inference_mode():
                        y = runner.run(state, layers, hidden=x.view(1, -1, runner.model.hidden_size))
                    conn.sendall(y.contiguous().numpy().tobytes())


class _Edge:
    """The edge's blocks and head in this process; the cloud's in this process too, or behind a socket."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        torch.set_num_threads(1)
        loaded = load_checkpoint(path)
        self.runner = TorchRunner(loaded.layered, batched=False)
        self.n = loaded.layered.num_layers
        self.front, self.middle = LayerRange(start=0, end=start), LayerRange(start=start, end=end)
        self.back = LayerRange(start=end, end=self.n)

    def generate(self, prompt: list[int], tokens: int, cloud: socket.socket | None, spin: bool
                 ) -> tuple[list[int], float]:
        """Greedy `tokens` after `prompt`; the tokens and the decode time per token (ms)."""
        r = self.runner
        front, middle, back = r.new_state(), r.new_state(), r.new_state()
        ids, out, started = torch.tensor(prompt), [], 0.0
        for step in range(tokens + 1):
            if step == 1:
                started = time.perf_counter()  # decode steps only: the prompt's step is not timed
            with torch.inference_mode():
                h = r.run(front, self.front, input_ids=ids)
                if cloud is None:
                    h = r.run(middle, self.middle, hidden=h)
                else:
                    cloud.sendall(_HEADER.pack(int(step == 0), h.numel(), int(spin)) + h.contiguous().numpy().tobytes())
                    h = torch.frombuffer(bytearray(_recv_exact(cloud, h.numel() * 4, spin)),
                                         dtype=torch.float32).view(h.shape)
                logits = r.run_head(back, self.back, hidden=h)
            token = int(logits[-1].argmax())
            out.append(token)
            ids = torch.tensor([token])
        return out, (time.perf_counter() - started) * 1000 / tokens


def bench_model(name: str, path: Path, args: argparse.Namespace) -> dict:
    start, end = CUTS[name]
    port = free_port()
    cloud = subprocess.Popen([sys.executable, __file__, "--serve", str(path), str(start), str(end), str(port)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert cloud.stdout is not None and cloud.stdout.readline().strip() == "ready", "the cloud did not start"
        edge = _Edge(path, start, end)
        prompt = list(range(10, 10 + args.prompt_tokens))
        ways = {"one process": (None, False), "two processes, blocking": (True, False),
                "two processes, busy-polling": (True, True)}
        samples: dict[str, list[float]] = {k: [] for k in ways}
        reference: list[int] = []  # one process's first generation: every later one must give the same
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
                for label, (remote, spin) in ways.items():
                    out, ms = edge.generate(prompt, args.tokens, sock if remote else None, spin)
                    reference = reference or out
                    if out != reference:
                        raise SystemExit(f"{name}: '{label}' generated other tokens than one process")
                    if repeat:
                        samples[label].append(ms)
    finally:
        cloud.kill()
        cloud.wait()
    med = {k: statistics.median(v) for k, v in samples.items()}
    mono = samples["one process"]
    row: dict = {"model": name, "cut": f"{start}:{end}", "tokens": args.tokens, "ms_per_token": med,
                 "samples": samples, "overhead_ms_per_step": {}, "x_one_process": {}}
    print(f"{name} ({start}:{end}, {args.tokens} greedy tokens, median of {args.repeats}): one process "
          f"{med['one process']:.2f} ms/token", flush=True)
    for label in list(ways)[1:]:
        over = statistics.median(s - m for s, m in zip(samples[label], mono, strict=True))
        row["overhead_ms_per_step"][label] = over
        row["x_one_process"][label] = med["one process"] / med[label]
        print(f"  {label}: {med[label]:.2f} ms/token, {over:.2f} ms/step over one process "
              f"({med['one process'] / med[label]:.2f}x)", flush=True)
    return row


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:  # the cloud process this script started
        path, start, end, port = sys.argv[2:6]
        return _serve_cloud(path, int(start), int(end), int(port))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CUTS), choices=list(CUTS))
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens per generation")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7, help="alternating generations per way")
    ap.add_argument("--out", type=Path, default=Path("bench/results/split_floor.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesplit-split-floor-"))
    rows = [bench_model(name, model_dir(name, work), args) for name in args.models]
    write_report(args, {"rows": rows})
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
