"""A real Prometheus for tests (Debian 12's, unpacked by tools/setup/ensure-prometheus): it
scrapes given targets, evaluates the monitoring component's alert rules, and answers the
HTTP API the dashboard's queries use. It binds a port of its own choosing and the kit reads
it from its log (no port picked in advance for a parallel test to take)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

BIN = Path(os.environ.get("CLM_PROMETHEUS_DIR", "/opt/clm/prometheus-2")) / "usr" / "bin"
PROMETHEUS, PROMTOOL = BIN / "prometheus", BIN / "promtool"
COMPONENT = Path(__file__).resolve().parents[2] / "deploy" / "kustomize" / "components" / "monitoring"
LISTENING = re.compile(r'msg="Listening on" address=([0-9.]+):(\d+)')


def missing() -> str | None:
    if PROMETHEUS.is_file() and PROMTOOL.is_file():
        return None
    return f"{PROMETHEUS} is not there: run tools/setup/install-system-deps (it unpacks Prometheus)"


def write_rule_file(dest: Path) -> Path:
    """The component's PrometheusRule as a plain Prometheus rule file (its spec)."""
    rule = yaml.safe_load((COMPONENT / "prometheus-rule.yaml").read_text())
    dest.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return dest


def dashboard_queries(rate_interval: str) -> dict[str, str]:
    """Every query of the Grafana dashboard, by panel title and target, with Grafana's
    $__rate_interval as given."""
    board = json.loads((COMPONENT / "clm-migrations.json").read_text())
    return {
        f"{panel['title']} [{target['refId']}]": target["expr"].replace("$__rate_interval", rate_interval)
        for panel in board["panels"]
        for target in panel["targets"]
    }


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, list[str]], *, scrape_seconds: float = 1.0) -> None:
        """`targets`: job -> host:port list, each scraped on /metrics."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        rules = write_rule_file(workdir / "clm-alerts.rules.yaml")
        every = f"{round(scrape_seconds * 1000)}ms"  # Prometheus durations take no fractions ("1.0s" fails)
        config = {
            "global": {"scrape_interval": every, "evaluation_interval": every},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> Prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    "--web.listen-address=127.0.0.1:0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            if found := LISTENING.search(self.log.read_text(errors="replace")):
                self.url = f"http://{found.group(1)}:{found.group(2)}"
                if "Server is ready to receive web requests" in self.log.read_text(errors="replace"):
                    return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"prometheus did not become ready: {self.log.read_text()[-2000:]}")

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as resp:
            answer = json.loads(resp.read())
        if answer.get("status") != "success":
            raise AssertionError(f"prometheus refused {path} {params}: {answer}")
        return answer["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def targets_up(self) -> dict[str, str]:
        """scrape URL -> health, of every active target."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def scraped_since(self, since: float) -> bool:
        """Every target scraped successfully after `since` (wall clock)."""
        targets = self.api("targets")["activeTargets"]
        return bool(targets) and all(
            t["health"] == "up" and _rfc3339(t["lastScrape"]) > since for t in targets
        )

    def last_scrape(self) -> float:
        """When the latest scrape of any target was (wall clock)."""
        return max(_rfc3339(t["lastScrape"]) for t in self.api("targets")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]


def _rfc3339(stamp: str) -> float:
    # Go prints nanoseconds; Python takes microseconds.
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, check=False)
