"""docker-compose.ray.yml and deploy/ray-serve.yaml: the cloud on Ray Serve, as an operator starts it with
compose or with Ray's own `serve run`; checked by parsing, and by building the Serve application they name."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from cloud_service.ray_router import SessionRouter
from cloud_service.settings import CloudSettings
from edgesplit.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_compose_starts_a_ray_head_then_the_application_then_an_edge() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.ray.yml").read_text())["services"]
    assert set(services) == {"ray-head", "cloud", "edge"}
    for service in services.values():
        assert service["build"]["args"]["EXTRAS"] == "ray", "the image must have Ray Serve"
        assert service["healthcheck"]["test"][0] == "CMD"
    assert services["cloud"]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert services["edge"]["depends_on"] == {"cloud": {"condition": "service_healthy"}}
    head = services["ray-head"]
    assert head["entrypoint"] == ["ray"] and head["command"][:2] == ["start", "--head"]
    assert _flag(head["command"], "--port") == "6379" and "8001" in head["expose"]

    cloud = build_parser().parse_args(services["cloud"]["command"])
    assert cloud.ray and cloud.ray_address == "ray-head:6379" and cloud.host == "0.0.0.0"
    edge = build_parser().parse_args(services["edge"]["command"])
    assert edge.cloud_url == f"http://ray-head:{cloud.port}", "edges reach Ray's proxy on the head"
    assert services["cloud"]["environment"]["CLOUD_AUTH_TOKEN"].startswith("${EDGESPLIT_CLOUD_TOKEN:?")
    assert services["cloud"]["environment"]["CLOUD_AUTH_TOKEN"] == services["edge"]["environment"]["EDGE_CLOUD_TOKEN"]
    for name in ("ray-head", "cloud"):  # replicas load the checkpoint on the head; the deployer checks it first
        (mount,) = services[name]["volumes"]
        assert mount["target"] == str(cloud.model_dir) == "/model" and mount["read_only"]


def test_the_image_installs_the_extras_it_is_built_with() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in dockerfile and 'pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"' in dockerfile


def test_the_serve_config_builds_the_application_with_its_settings() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "ray-serve.yaml").read_text())
    (app,) = config["applications"]
    assert app["route_prefix"] == "/"
    assert set(app["args"]) <= set(CloudSettings.model_fields), "args are the cloud's settings"
    module, _, name = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    args = {**app["args"], "model_dir": str(ROOT / app["args"]["model_dir"])}
    deployment = builder(args)._bound_deployment  # what `serve run` would deploy
    assert deployment.num_replicas == app["args"]["replicas"]
    assert deployment._deployment_config.request_router_config.get_request_router_class() is SessionRouter
    assert config["http_options"]["host"] == app["args"]["host"], "replicas listen where the proxy does"
