"""Mutual TLS between edge and cloud when certificates are configured: a real CA, real processes.

Certificates are made with the openssl command line for the test: a CA, the cloud's server certificate for
127.0.0.1, and an edge client certificate. The cloud accepts only clients with a certificate from the CA.
"""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from edgesplit.procs import free_port, serve, wait_healthy
from splitcore.defaults import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.e2e  # spawns processes, drives a browser or fuzzes: out of the fast loop (-m 'not e2e')

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / DEFAULT_MODEL_DIR


def make_certs(d: Path) -> dict[str, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=edgesplit test CA")
    for name, cn in [("cloud", "127.0.0.1"), ("edge", "edge device")]:
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        ext = "subjectAltName=IP:127.0.0.1" if name == "cloud" else "extendedKeyUsage=clientAuth"
        (d / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return {k: d / k for k in ["ca.pem", "cloud.pem", "cloud.key", "edge.pem", "edge.key"]}


def test_edge_and_cloud_speak_mutual_tls_and_strangers_are_turned_away(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    cloud_port, edge_port = free_port(), free_port()
    cloud_args = ["--model", str(MODEL), "--threads", "1", "--ssl-certfile", str(certs["cloud.pem"]),
                  "--ssl-keyfile", str(certs["cloud.key"]), "--ssl-ca-certs", str(certs["ca.pem"])]
    with serve("cloud", cloud_args, cloud_port, tmp_path / "cloud.log") as cloud:
        base = f"https://127.0.0.1:{cloud_port}"
        context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        context.load_cert_chain(str(certs["edge.pem"]), str(certs["edge.key"]))
        deadline = time.monotonic() + 60
        while True:  # wait_healthy cannot present a client certificate
            assert cloud.poll() is None, (tmp_path / "cloud.log").read_text()
            try:
                if httpx.get(f"{base}/health", verify=context).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        with pytest.raises(httpx.TransportError):  # no client certificate: the handshake fails
            httpx.get(f"{base}/health", verify=ssl.create_default_context(cafile=str(certs["ca.pem"])))
        with pytest.raises(httpx.TransportError):  # and the plain-http port does not exist
            httpx.get(f"http://127.0.0.1:{cloud_port}/health")
        edge_args = ["--model", str(MODEL), "--cloud", base, "--cut", "2:6", "--codec", "fp32", "--threads", "1",
                     "--cloud-ca-file", str(certs["ca.pem"]), "--cloud-client-cert", str(certs["edge.pem"]),
                     "--cloud-client-key", str(certs["edge.key"])]
        with serve("edge", edge_args, edge_port, tmp_path / "edge.log") as edge:
            url = f"http://127.0.0.1:{edge_port}"
            wait_healthy(f"{url}/health", edge)
            out = httpx.post(f"{url}/v1/completions", json={"prompt": "And", "max_tokens": 8, "temperature": 0},
                             timeout=60).json()
            assert out["edgesplit"]["fallback"] is None and out["edgesplit"]["link"]["decode_tokens"] == 7
