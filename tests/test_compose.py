"""docker-compose.yml describes the same two services the Makefile starts, with health checks."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _make_var(name: str, makefile: str) -> str:
    match = re.search(rf"^{name} \?= (.+)$", makefile, re.M)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def test_compose_runs_the_makefile_services_with_health_checks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    services = compose["services"]
    assert set(services) == {"cloud", "edge"}
    for name, service in services.items():
        assert service["command"][:2] == ["serve", name]
        assert service["healthcheck"]["test"][0] == "CMD" and "/health" in service["healthcheck"]["test"][-1]
        assert "build" in service
    assert services["edge"]["depends_on"] == {"cloud": {"condition": "service_healthy"}}

    cloud, edge = services["cloud"]["command"], services["edge"]["command"]
    flag = lambda cmd, f: cmd[cmd.index(f) + 1]  # noqa: E731
    assert flag(cloud, "--port") == _make_var("CLOUD_PORT", makefile)
    assert flag(edge, "--port") == _make_var("EDGE_PORT", makefile)
    assert flag(edge, "--cloud") == f"http://cloud:{_make_var('CLOUD_PORT', makefile)}"
    assert flag(edge, "--cut") == _make_var("CUT", makefile)
    assert flag(edge, "--model") == flag(cloud, "--model") == _make_var("MODEL", makefile)
    serve_edge = re.search(r"^serve-edge:.*\n\t(.+)$", makefile, re.M)
    assert serve_edge and f"--codec {flag(edge, '--codec')}" in serve_edge.group(1)


def test_compose_ports_match_the_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        port = service["command"][service["command"].index("--port") + 1]
        assert service["ports"] == [f"{port}:{port}"]


def test_the_cli_parses_every_flag_compose_passes() -> None:
    from edgesplit.cli import build_parser

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        args = build_parser().parse_args(service["command"])
        assert args.port in (8000, 8001)


def test_compose_gives_both_tiers_the_same_cloud_token() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    cloud_env, edge_env = compose["services"]["cloud"]["environment"], compose["services"]["edge"]["environment"]
    assert cloud_env["CLOUD_AUTH_TOKEN"] == edge_env["EDGE_CLOUD_TOKEN"]
