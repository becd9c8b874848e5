"""The `edgesplit` command. Flags override `EDGE_*` / `CLOUD_*` environment variables (one settings object each)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from splitcore.errors import EdgesplitError


def _settings_kwargs(args: argparse.Namespace, names: list[str]) -> dict:
    """Only the flags the user gave: the rest come from the environment or the defaults."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _serve_cloud(args: argparse.Namespace) -> None:
    import uvicorn

    from cloud_service.app import create_app
    from cloud_service.settings import CloudSettings
    from splitcore.loading import read_config

    settings = CloudSettings(**_settings_kwargs(args, ["model_dir", "host", "port", "layers", "threads",
                                                       "session_ttl_s", "max_sessions", "max_cache_mb"]))
    read_config(settings.model_dir)  # refuse a missing or unsupported checkpoint before starting the server
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s cloud %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False)  # one line per decoded token would cost more than the step


def _serve_edge(args: argparse.Namespace) -> None:
    import uvicorn

    from edge_service.app import create_app
    from edge_service.runtime import plan_from_settings
    from edge_service.settings import EdgeSettings
    from splitcore.loading import read_config

    settings = EdgeSettings(**_settings_kwargs(args, ["model_dir", "cloud_url", "cut", "head", "codec", "zstd_level",
                                                      "allow_tokens_off_device", "host", "port", "threads"]))
    plan_from_settings(settings, read_config(settings.model_dir).num_hidden_layers)  # refuse a bad plan before loading
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s edge %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


def _demo(args: argparse.Namespace) -> None:
    from edgesplit.demo import run_demo

    run_demo(model_dir=args.model_dir, cut=args.cut, codec=args.codec, prompt=args.prompt, max_tokens=args.max_tokens)


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

    serve = sub.add_parser("serve", help="run one tier").add_subparsers(dest="tier", required=True)
    cloud = serve.add_parser("cloud", help="the cloud tier: shard endpoint and session store")
    cloud.add_argument("--model", dest="model_dir", type=Path, help="checkpoint directory")
    cloud.add_argument("--host")
    cloud.add_argument("--port", type=int)
    cloud.add_argument("--layers", help="A:B: keep only blocks [A, B) in memory")
    cloud.add_argument("--threads", type=int, help="torch threads")
    cloud.add_argument("--session-ttl-s", type=float)
    cloud.add_argument("--max-sessions", type=int)
    cloud.add_argument("--max-cache-mb", type=float)
    cloud.set_defaults(func=_serve_cloud)

    edge = serve.add_parser("edge", help="the edge tier: OpenAI-compatible API, tokenizer, front/back blocks")
    edge.add_argument("--model", dest="model_dir", type=Path, help="checkpoint directory")
    edge.add_argument("--cloud", dest="cloud_url", help="cloud base URL, e.g. http://127.0.0.1:8001")
    edge.add_argument("--cut", help="A:B, A, 'edge' or 'cloud'")
    edge.add_argument("--head", choices=["edge", "cloud"])
    edge.add_argument("--codec", choices=["fp32", "fp16", "bf16", "int8"])
    edge.add_argument("--zstd-level", type=int)
    edge.add_argument("--allow-tokens-off-device", action="store_true", default=None)
    edge.add_argument("--host")
    edge.add_argument("--port", type=int)
    edge.add_argument("--threads", type=int, help="torch threads")
    edge.set_defaults(func=_serve_edge)
    return parser


def main(argv: list[str] | None = None) -> None:
    # The two tiers take turns on the same cores: an idle tier's OpenMP threads must sleep, not spin, or they
    # steal the CPU the other tier is computing on (set before torch is imported). An operator's own
    # OMP_WAIT_POLICY or GOMP_SPINCOUNT (a bounded spin) wins.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EdgesplitError as exc:  # a user's mistake: one clear line, no traceback
        print(f"edgesplit: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
