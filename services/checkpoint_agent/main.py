"""Entry point: clm-checkpoint-agent (see --help)."""

import sys

from clm.runtime.cli import run_service
from services.checkpoint_agent.app import SUMMARY, CheckpointAgentSettings, build


def main() -> int:
    return run_service(
        name="checkpoint-agent", summary=SUMMARY, settings_cls=CheckpointAgentSettings, build=build
    )


if __name__ == "__main__":
    sys.exit(main())
