"""Entry point: clm-evictor-planner (see --help)."""

import sys

from clm.runtime.cli import run_service
from services.evictor_planner.app import SUMMARY, PlannerSettings, build


def main() -> int:
    return run_service(name="evictor-planner", summary=SUMMARY, settings_cls=PlannerSettings, build=build)


if __name__ == "__main__":
    sys.exit(main())
