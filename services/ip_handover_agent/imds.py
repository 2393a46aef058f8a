"""This EC2 instance's primary ENI and region, from the instance metadata service (IMDSv2).

The aws-vpc backend runs as a DaemonSet, where no per-node setting can name the node's ENI;
the agent asks the metadata service instead (reachable from the host network).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = "300"


class ImdsError(RuntimeError):
    pass


@dataclass(frozen=True)
class InstanceNetwork:
    eni_id: str
    region: str


def _request(req: urllib.request.Request, timeout: float) -> str:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read().decode().strip()
    except (urllib.error.URLError, OSError) as exc:
        raise ImdsError(f"{req.get_method()} {req.full_url}: {exc}") from exc


def discover(endpoint: str = DEFAULT_ENDPOINT, *, timeout: float = 2.0) -> InstanceNetwork:
    """The primary network interface's ENI id and the region, or ImdsError saying why not."""
    base = endpoint.rstrip("/")
    token = _request(
        urllib.request.Request(
            f"{base}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL_SECONDS},
        ),
        timeout,
    )

    def get(path: str) -> str:
        req = urllib.request.Request(
            f"{base}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
        )
        value = _request(req, timeout)
        if not value:
            raise ImdsError(f"{base}/latest/meta-data/{path} is empty")
        return value

    mac = get("mac")
    return InstanceNetwork(
        eni_id=get(f"network/interfaces/macs/{mac}/interface-id"), region=get("placement/region")
    )
