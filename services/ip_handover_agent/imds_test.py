"""IMDSv2 discovery against a small server that answers like EC2's metadata service: a
session token from PUT /latest/api/token is required on every read (401 without it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clm.runtime.settings import SettingsError, load_settings
from services.ip_handover_agent import imds
from services.ip_handover_agent.app import IpHandoverSettings

TOKEN = "AQAEAFake-token=="
METADATA = {
    "/latest/meta-data/mac": "0e:11:22:33:44:55",
    "/latest/meta-data/network/interfaces/macs/0e:11:22:33:44:55/interface-id": "eni-0abc1234def567890",
    "/latest/meta-data/placement/region": "eu-west-1",
}


class FakeImds(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:  # - http.server's naming
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self._answer(200 if ok else 400, TOKEN if ok else "")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._answer(401, "")
        elif self.path in METADATA:
            self._answer(200, METADATA[self.path])
        else:
            self._answer(404, "")

    def _answer(self, status: int, body: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_discovers_the_primary_eni_and_region(endpoint: str) -> None:
    assert imds.discover(endpoint) == imds.InstanceNetwork("eni-0abc1234def567890", "eu-west-1")


def test_a_missing_entry_is_an_error_naming_it(endpoint: str) -> None:
    del METADATA["/latest/meta-data/placement/region"]
    try:
        with pytest.raises(imds.ImdsError, match="placement/region"):
            imds.discover(endpoint)
    finally:
        METADATA["/latest/meta-data/placement/region"] = "eu-west-1"


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> IpHandoverSettings:
    monkeypatch.setenv("CLM_NODE_NAME", "ip-10-0-1-17")
    monkeypatch.setenv("CLM_NETWORK_BACKEND", "aws-vpc")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(IpHandoverSettings)


def test_settings_win_and_the_rest_comes_from_imds(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, CLM_AWS_IMDS_ENDPOINT=endpoint, CLM_AWS_REGION="us-east-2")
    assert settings.aws_instance_network() == imds.InstanceNetwork("eni-0abc1234def567890", "us-east-2")
    both = _settings(
        monkeypatch,
        CLM_AWS_ENI_ID="eni-1",
        CLM_AWS_REGION="us-east-2",
        CLM_AWS_IMDS_ENDPOINT="http://127.0.0.1:9",
    )
    assert both.aws_instance_network() == imds.InstanceNetwork("eni-1", "us-east-2")


def test_unreachable_imds_without_settings_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, CLM_AWS_IMDS_ENDPOINT="http://127.0.0.1:9")
    with pytest.raises(SettingsError, match="CLM_AWS_ENI_ID and CLM_AWS_REGION"):
        settings.aws_instance_network()
