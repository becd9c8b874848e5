"""`edgesplit demo`: both tiers on loopback, one streamed generation, and what crossed the link."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.sse import data_events
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import read_config


def run_demo(model_dir: Path | None, cut: str | None, codec: str, prompt: str, max_tokens: int) -> None:
    model_dir = model_dir or DEFAULT_MODEL_DIR
    config = read_config(model_dir)
    layers = config.num_hidden_layers
    cut = cut or f"{layers // 4}:{layers - layers // 4}"
    cloud_port, edge_port = free_port(), free_port()
    logs = Path(tempfile.mkdtemp(prefix="edgesplit-demo-"))
    print(f"model      {model_dir} ({config.model_type}, {layers} blocks, hidden {config.hidden_size})")
    print(f"plan       cut {cut}: the edge runs the first and last blocks and the head, the cloud the middle; "
          f"codec {codec}")
    print(f"starting   cloud on 127.0.0.1:{cloud_port}, edge on 127.0.0.1:{edge_port} (logs in {logs})")
    cloud_args = ["--model", str(model_dir)]
    # a fixed depth: the demo's request is seeded, and only a fixed depth reproduces a seeded sample (`auto`, the
    # default, decodes seeded sampled requests plainly)
    edge_args = ["--model", str(model_dir), "--cloud", f"http://127.0.0.1:{cloud_port}", "--cut", cut,
                 "--codec", codec, "--speculate", "4"]
    with serve("cloud", cloud_args, cloud_port, logs / "cloud.log") as cloud, \
            serve("edge", edge_args, edge_port, logs / "edge.log") as edge:
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", cloud)
        wait_healthy(f"http://127.0.0.1:{edge_port}/health", edge)
        _plan(model_dir, f"http://127.0.0.1:{cloud_port}", prompt_tokens=16, output_tokens=max_tokens)
        print(f"\nprompt     {prompt}\ngeneration ", end="", flush=True)
        started = time.perf_counter()
        final = _stream(f"http://127.0.0.1:{edge_port}", prompt, max_tokens)
        elapsed = time.perf_counter() - started
    usage, ext = final["usage"], final["edgesplit"]
    link = ext["link"]
    raw_fp32 = config.hidden_size * 4
    print(f"\n\nplan       {ext['plan']}")
    print(f"tokens     {usage['prompt_tokens']} prompt, {usage['completion_tokens']} generated in {elapsed:.2f} s "
          f"(first token after {ext['time_to_first_token_ms']:.0f} ms)")
    print(f"prefill    {link['prefill_bytes_up']} bytes up, {link['prefill_bytes_down']} bytes down")
    print(f"per token  {link['decode_bytes_up_per_token']:.0f} bytes up, {link['decode_bytes_down_per_token']:.0f} "
          f"bytes down (raw fp32 hidden state: {raw_fp32} bytes)")
    spec = ext.get("speculation")
    if spec and spec["round_trips"]:
        print(f"speculated {spec['drafted']} drafts, {spec['accepted']} accepted, in {spec['round_trips']} round trips "
              f"(up to {spec['depth']} drafts each; --speculate off decodes one token per round trip)")


def _plan(model_dir: Path, cloud_url: str, prompt_tokens: int, output_tokens: int) -> None:
    """Profile this process as the edge (1 thread), fetch the cloud's profile, probe the link, and search."""
    import torch
    from transformers.utils import logging as hf_logging

    from edge_service.cloud_client import CloudClient
    from partitioner.costmodel import Workload
    from partitioner.planning import PlanInputs, describe, plan_for
    from partitioner.search import Constraints
    from profiling.link_estimator import LinkEstimator
    from profiling.profiler import measure_profile
    from splitcore.loading import load_checkpoint

    print("profiling  the edge (this process, 1 thread) and the cloud (GET /profile); probing the link ...")
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    edge_profile = measure_profile(load_checkpoint(model_dir), "edge", repeats=3, emulation="1 thread")
    client = CloudClient(cloud_url)
    try:
        inputs = PlanInputs.gather(edge_profile, client, LinkEstimator())
    finally:
        client.close()
    workload = Workload(prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    result = plan_for(inputs, workload, Constraints.from_limits(min_edge_layers=1))
    link = inputs.link
    print("planner    " + describe(result, link, workload).replace("\n", "\n           "))
    print("           (the demo runs the split it was given, to show activations crossing the link)")


def _stream(base_url: str, prompt: str, max_tokens: int) -> dict:
    """Stream a completion, printing text as it arrives; return the usage chunk."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95, "seed": 7,
            "stream": True, "stream_options": {"include_usage": True}}
    final: dict = {}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as response:
        if response.status_code != 200:
            raise RuntimeError(f"edge answered {response.status_code}: {response.read().decode()}")
        for chunk in data_events(response.iter_lines()):
            if chunk is None:
                continue
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                final = chunk
            for choice in chunk["choices"]:
                print(choice["text"], end="", flush=True)
    return final
