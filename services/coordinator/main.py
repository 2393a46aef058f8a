"""Entry point: clm-coordinator (see --help)."""

import sys

from clm.runtime.cli import run_service
from services.coordinator.app import SUMMARY, CoordinatorSettings, build


def main() -> int:
    return run_service(name="coordinator", summary=SUMMARY, settings_cls=CoordinatorSettings, build=build)


if __name__ == "__main__":
    sys.exit(main())
