"""The `edgesplit` command. Flags override `EDGE_*` / `CLOUD_*` environment variables (one settings object each)."""

from __future__ import annotations

import os

from splitcore.openmp import openmp_env

os.environ.update(openmp_env())  # before the imports below (some load torch): libgomp reads it once, at load

import argparse
import json
import ssl
import sys
from pathlib import Path

from cloud_service.settings import CloudSettings
from edge_service.settings import EdgeSettings
from edgesplit.flags import add_settings_flags, settings_from_args
from splitcore.channel import TAG_BYTES
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.errors import EdgesplitError, UserError
from splitcore.http import header_timeout_protocol
from splitcore.logs import configure_logging

GRACE_S = 30  # on SIGTERM, requests in flight get this long to finish before the server closes


def _uvicorn_tls(certfile: Path | None, keyfile: Path | None, client_ca: Path | None = None) -> dict:
    """uvicorn's TLS arguments; with `client_ca`, mutual TLS: only clients with a certificate it signed get in."""
    if certfile is None:
        return {}
    if keyfile is None:
        raise UserError("--ssl-certfile needs --ssl-keyfile too")
    tls: dict = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    if client_ca is not None:
        tls |= {"ssl_ca_certs": str(client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return tls


def _serve_cloud(args: argparse.Namespace) -> None:
    import uvicorn

    from cloud_service.app import create_app
    from splitcore.loading import read_config

    settings = settings_from_args(CloudSettings, args)
    read_config(settings.model_dir)  # refuse a missing or unsupported checkpoint before starting the server
    configure_logging("cloud", settings.log_level, settings.log_format)
    if settings.ray:
        try:
            from cloud_service.ray_app import serve_forever
        except ImportError as exc:
            raise UserError(f"--ray needs Ray Serve: pip install '.[ray]' ({exc})") from exc
        serve_forever(settings)
        return
    tls = _uvicorn_tls(settings.ssl_certfile, settings.ssl_keyfile, settings.ssl_ca_certs)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=None, access_log=False,  # one line per decoded token would cost more than the step
                http=header_timeout_protocol(settings.header_timeout_s), timeout_graceful_shutdown=GRACE_S,
                ws_max_size=settings.max_frame_bytes + TAG_BYTES, **tls)  # a frame channel's message: tag + frame


def _serve_edge(args: argparse.Namespace) -> None:
    import uvicorn

    from edge_service.app import create_app
    from edge_service.runtime import plan_from_settings
    from splitcore.loading import read_config

    settings = settings_from_args(EdgeSettings, args)
    config = read_config(settings.model_dir)  # refuse a missing or unsupported checkpoint before loading it
    if settings.cut != "auto":
        plan_from_settings(settings, config.num_hidden_layers)  # and a bad plan
    configure_logging("edge", settings.log_level, settings.log_format)
    tls = _uvicorn_tls(settings.ssl_certfile, settings.ssl_keyfile)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=None,
                http=header_timeout_protocol(settings.header_timeout_s), timeout_graceful_shutdown=GRACE_S, **tls)


def _demo(args: argparse.Namespace) -> None:
    from edgesplit.demo import run_demo

    run_demo(model_dir=args.model_dir, cut=args.cut, codec=args.codec, prompt=args.prompt, max_tokens=args.max_tokens)


def _profile(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from cloud_service.selfcost import with_request_cost
    from profiling.profiler import measure_profile
    from splitcore.loading import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.model_dir)
    emulation = args.emulate or (f"{args.threads} of {os.cpu_count()} cores" if args.threads else "")
    profile = measure_profile(loaded, args.device_name, repeats=args.repeats, emulation=emulation,
                              progress=lambda it: tqdm(list(it), desc=f"profiling {loaded.name} blocks"),
                              backends=args.backends.split(","), onnx_dir=args.onnx_dir, quantize=args.onnx_quantize)
    profile = with_request_cost(profile, loaded)
    out = args.out or Path("profiles") / f"{args.device_name}-{loaded.name}.json"
    profile.save(out)
    total = sum(p.decode_at(128) for p in profile.layers)
    print(f"wrote {out}: {profile.num_layers} blocks, {total:.2f} ms per decode step at context 128 "
          f"with {profile.machine.threads} threads (torch); a shard request's own cost "
          f"{profile.request_ms:.2f} ms alone, {profile.request_busy_ms:.2f} ms in a batch")
    batched = sum(p.decode_batch_ms.get(64, 0.0) for p in profile.layers)
    if batched:
        print(f"  batched: {batched:.2f} ms per decode round of 64 sessions ({batched / 64:.3f} ms each)")
    for name, cost in profile.runtimes.items():
        print(f"  {name}: {sum(p.decode_at(128) for p in cost.layers):.2f} ms per decode step at context 128")


def _plan(args: argparse.Namespace) -> None:
    from partitioner.costmodel import Workload
    from partitioner.planning import PlanInputs, describe, plan_for
    from partitioner.search import Constraints
    from profiling.link_estimator import Link, parse_bandwidth, parse_duration_ms
    from profiling.profile import Profile
    from splitcore.loading import load_checkpoint

    workload = Workload.parse(args.workload)
    link = Link(bandwidth_bps=parse_bandwidth(args.bandwidth), rtt_ms=parse_duration_ms(args.rtt))
    model = load_checkpoint(args.model_dir) if args.max_codec_loss is not None or args.draft != "off" else None
    losses_of = model if args.max_codec_loss is not None else None
    drafts = None
    if args.draft != "off":
        from edge_service.speculation import DraftModel
        from profiling.acceptance import measure_drafts
        assert model is not None
        draft = None if args.draft == "self" else DraftModel.load(Path(args.draft), model).loaded
        drafts = measure_drafts(model, draft)
    inputs = PlanInputs.gather(Profile.load(args.edge_profile), Profile.load(args.cloud_profile), link, losses_of,
                               drafts)
    constraints = Constraints.from_limits(args.edge_memory_mb, args.min_edge_layers, args.allow_tokens_off_device,
                                          args.max_codec_loss)
    result = plan_for(inputs, workload, constraints, seed=args.seed, trials=args.trials)
    if args.json:
        best = result.best
        print(json.dumps({"cut": [best.plan.cut_a, best.plan.cut_b], "head": best.plan.head, "codec": best.plan.codec,
                          "zstd_level": best.plan.zstd_level, "speculate": best.speculate,
                          **best.estimate.model_dump(), "search_s": result.search_s,
                          "baselines": {k: {"plan": v.plan.describe(), "feasible": v.feasible,
                                            **v.estimate.model_dump()} for k, v in result.baselines.items()}}))
    else:
        print(describe(result, link, workload))
        chosen = result.best.plan
        spec = "" if not result.best.speculate else \
            " --speculate auto" + ("" if args.draft == "self" else f" --draft-model {args.draft}")
        print(f"serve it with: edgesplit serve edge --cut {chosen.cut_a}:{chosen.cut_b} --head {chosen.head} "
              f"--codec {chosen.codec} --zstd-level {chosen.zstd_level}{spec}")


def _status(args: argparse.Namespace) -> None:
    """`edgesplit status URL`: what a running edge serves and how (its admin API, with EDGE_ADMIN_TOKEN)."""
    import datetime

    import httpx

    base = args.url.rstrip("/")
    token = os.environ.get("EDGE_ADMIN_TOKEN", "")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=args.timeout) as client:
            health = client.get("/health")
            admin = {name: client.get(f"/admin/{name}") for name in ("plan", "batching", "requests")}
    except httpx.HTTPError as exc:
        raise UserError(f"the edge at {base} did not answer: {exc}") from exc
    try:
        h = health.json()
    except ValueError as exc:
        raise UserError(f"{base}/health answered {health.status_code} without JSON: is it an edgesplit edge?") from exc
    if args.json:
        print(json.dumps({"health": h, **{k: v.json() if v.status_code == 200 else None for k, v in admin.items()}}))
        return
    print(f"edge {base}: {h.get('status', health.status_code)} - {h.get('detail', h.get('error', ''))}")
    print(f"  model {h.get('model')}, plan: {h.get('plan')}")
    if any(r.status_code in (401, 403) for r in admin.values()):
        print("  (the plan history, link estimate and requests need the admin token: set EDGE_ADMIN_TOKEN)")
        return
    plan, batching, requests = (admin[k].json() for k in ("plan", "batching", "requests"))
    link = plan["link"]
    least = "" if link.get("bandwidth_resolved", True) else "at least "
    print(f"  link estimate: {least}{link['bandwidth_bps'] / 1e6:.1f} Mbit/s, RTT {link['rtt_ms']:.2f} ms "
          f"(confidence {link['confidence']:.2f}, {link['samples']} exchanges)")
    print(f"  plan changes: {len(plan.get('changes', []))}; adaptive: {plan.get('adaptive')}")
    cloud = batching.get("cloud")
    print("  cloud: " + (f"{cloud.get('status')}, {cloud.get('sessions')} sessions, batch {cloud.get('batch_size')}"
                         if cloud else "unreachable"))
    recent = requests["requests"][-args.requests:]
    print(f"  last {len(recent)} requests:" if recent else "  no requests yet")
    for r in recent:
        at = datetime.datetime.fromtimestamp(r["at_s"]).strftime("%H:%M:%S")
        ttft = f"{r['time_to_first_token_ms']:.0f} ms" if r["time_to_first_token_ms"] is not None else "-"
        total = f"{r['total_ms']:.0f} ms" if r["total_ms"] is not None else "-"
        print(f"    {at} {r['endpoint']:<10} {r['outcome']:<12} first token {ttft:>8}, total {total:>8}, "
              f"{r['output_tokens']} tokens")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesplit", description="Edge-cloud split inference for transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="start both tiers on loopback, generate once, print what crossed the link")
    demo.add_argument("--model", dest="model_dir", type=Path, default=None, help="checkpoint directory")
    demo.add_argument("--cut", default=None, help="A:B (default: the middle half of the blocks in the cloud)")
    demo.add_argument("--codec", default="int8", choices=["fp32", "fp16", "bf16", "int8"])
    demo.add_argument("--prompt", default="And it came to pass, when the king", help="text to continue")
    demo.add_argument("--max-tokens", type=int, default=60)
    demo.set_defaults(func=_demo)

    prof = sub.add_parser("profile", help="measure per-block latency and memory of a model on this machine")
    prof.add_argument("--model", dest="model_dir", type=Path, default=DEFAULT_MODEL_DIR)
    prof.add_argument("--device-name", required=True, help="what this machine is, e.g. edge or cloud")
    prof.add_argument("--threads", type=int, help="torch threads (fewer emulates a slower device)")
    prof.add_argument("--emulate", default="", help="how a slower device is emulated, recorded in the profile")
    prof.add_argument("--repeats", type=int, default=5)
    prof.add_argument("--out", type=Path, help="default: profiles/DEVICE-MODEL.json")
    prof.add_argument("--backends", default="torch,onnxruntime", help="runtimes to measure, comma-separated")
    prof.add_argument("--onnx-dir", type=Path, help="cache of ONNX exports (default: ~/.cache/edgesplit/onnx)")
    prof.add_argument("--onnx-quantize", action="store_true", help="measure ONNX Runtime with int8 weights")
    prof.set_defaults(func=_profile)

    # Their own parsers take every argument after the name (see `main`); listed here for --help.
    sub.add_parser("bench", help="every plan against the planner's choice on emulated links (edgesplit bench -h)")
    sub.add_parser("loadtest", help="streaming load against an edge: latency percentiles, memory (-h for more)")

    plan = sub.add_parser("plan", help="choose cut points for two profiles and a link")
    plan.add_argument("--model", dest="model_dir", type=Path, default=DEFAULT_MODEL_DIR,
                      help="checkpoint (used to measure codec accuracy with --max-codec-loss)")
    plan.add_argument("--edge-profile", type=Path, required=True)
    plan.add_argument("--cloud-profile", type=Path, required=True)
    plan.add_argument("--bandwidth", required=True, help="e.g. 10mbit, 1gbit")
    plan.add_argument("--rtt", required=True, help="e.g. 40ms")
    plan.add_argument("--workload", default="128:64", help="PROMPT:OUTPUT[:STREAMS] (generations at once)")
    plan.add_argument("--edge-memory-mb", type=float, help="device memory budget")
    plan.add_argument("--min-edge-layers", type=int, default=0, help="privacy: blocks that stay on the device")
    plan.add_argument("--allow-tokens-off-device", action="store_true")
    plan.add_argument("--max-codec-loss", type=float, help="largest perplexity ratio - 1 a codec may add")
    plan.add_argument("--draft", default="off", help="weigh speculation with this draft: self (the edge's own blocks) "
                      "or a draft checkpoint; its acceptance is measured on --model here (default: off)")
    plan.add_argument("--trials", type=int, default=150)
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=_plan)

    status = sub.add_parser("status", help="a running edge's plan, link estimate, cloud health, recent requests "
                                           "(the admin token from EDGE_ADMIN_TOKEN)")
    status.add_argument("url", help="the edge, e.g. http://127.0.0.1:8000")
    status.add_argument("--requests", type=int, default=10, help="recent requests to list")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    serve = sub.add_parser("serve", help="run one tier").add_subparsers(dest="tier", required=True)
    cloud = serve.add_parser("cloud", help="the cloud tier: shard endpoint and session store")
    # every setting is a flag (edgesplit.flags); the edge token is read from CLOUD_AUTH_TOKEN only
    add_settings_flags(cloud, CloudSettings)
    cloud.set_defaults(func=_serve_cloud)

    edge = serve.add_parser("edge", help="the edge tier: OpenAI-compatible API, tokenizer, front/back blocks")
    # tokens come from EDGE_CLOUD_TOKEN and EDGE_ADMIN_TOKEN only: a flag would show them in the process list
    add_settings_flags(edge, EdgeSettings)
    edge.set_defaults(func=_serve_edge)
    return parser


TOOLS = {"bench": "edgesplit.tools.linkbench", "loadtest": "edgesplit.tools.loadtest"}
BENCH_EXTRA = ("openai", "matplotlib")  # pyproject's `bench` extra: checked before a run, not when its report is due


def _tool(command: str, argv: list[str]) -> None:
    """`edgesplit bench` and `edgesplit loadtest`: tooling with its own parser, from the `bench` extra."""
    import importlib
    import importlib.util

    missing = [name for name in BENCH_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(f"edgesplit {command} needs the bench extra: pip install 'edgesplit[bench]' (missing: "
              f"{', '.join(missing)})", file=sys.stderr)
        raise SystemExit(2)
    importlib.import_module(TOOLS[command]).main(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["bench"], ["loadtest"]):
        return _tool(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EdgesplitError as exc:  # a user's mistake: one clear line, no traceback
        print(f"edgesplit: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
