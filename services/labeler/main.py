"""Entry point: clm-labeler (see --help)."""

import sys

from clm.runtime.cli import run_service
from services.labeler.app import SUMMARY, LabelerSettings, build


def main() -> int:
    return run_service(name="labeler", summary=SUMMARY, settings_cls=LabelerSettings, build=build)


if __name__ == "__main__":
    sys.exit(main())
