"""Print one closing line for the whole test run from Pants' JUnit XML reports:
`tests: N passed, N failed, N skipped` (the per-file pytest summaries stay in Pants' logs)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def summarise(report_dir: Path) -> tuple[int, int, int]:
    passed = failed = skipped = 0
    for path in sorted(report_dir.glob("*.xml")):
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
        for suite in suites:
            total = int(suite.get("tests", 0))
            bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skip = int(suite.get("skipped", 0))
            passed += total - bad - skip
            failed += bad
            skipped += skip
    return passed, failed, skipped


def main() -> int:
    report_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/test/reports")
    if not report_dir.is_dir():
        print(f"no test reports in {report_dir}", file=sys.stderr)
        return 1
    passed, failed, skipped = summarise(report_dir)
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    return 0 if passed and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
