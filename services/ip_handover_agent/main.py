"""Entry point: clm-ip-handover-agent (see --help)."""

import sys

from clm.runtime.cli import run_service
from services.ip_handover_agent.app import SUMMARY, IpHandoverSettings, build


def main() -> int:
    return run_service(
        name="ip-handover-agent", summary=SUMMARY, settings_cls=IpHandoverSettings, build=build
    )


if __name__ == "__main__":
    sys.exit(main())
