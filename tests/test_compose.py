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
    assert flag(edge, "--model") == flag(cloud, "--model") == "/model"
    for service in services.values():  # the mounted checkpoint: the Makefile's model unless the user names one
        (mount,) = service["volumes"]
        assert mount["target"] == "/model" and mount["read_only"]
        assert mount["source"] == "${EDGESPLIT_MODEL_DIR:-./" + _make_var("MODEL", makefile) + "}"
    serve_edge = re.search(r"^serve-edge:.*\n\t(.+)$", makefile, re.M)
    assert serve_edge and f"--codec {flag(edge, '--codec')}" in serve_edge.group(1)


def test_compose_publishes_the_edge_and_keeps_the_cloud_on_its_network() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    port = lambda service: service["command"][service["command"].index("--port") + 1]  # noqa: E731
    edge, cloud = compose["services"]["edge"], compose["services"]["cloud"]
    assert edge["ports"] == [f"{port(edge)}:{port(edge)}"]
    assert "ports" not in cloud and cloud["expose"] == [port(cloud)]


def test_the_cloud_never_runs_open_in_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    token = compose["services"]["cloud"]["environment"]["CLOUD_AUTH_TOKEN"]
    assert token.startswith("${EDGESPLIT_CLOUD_TOKEN:?")  # compose refuses to start without it


def test_the_image_installs_the_cpu_build_of_the_pinned_torch_first() -> None:
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text()
    pinned = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("torch=="))
    torch_line = next(line for line in dockerfile.splitlines() if line.startswith("RUN") and "torch==" in line)
    assert "download.pytorch.org/whl/cpu" in torch_line and torch_line.rstrip().endswith(pinned)
    assert dockerfile.index(torch_line) < dockerfile.index("pip install --no-cache-dir \".")


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
