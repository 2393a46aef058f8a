"""Turns Pants' pex lockfile into the hashed requirements lock the repository keeps.

A pex lockfile names every artifact by its download URL; a requirements-style lock names
each distribution by version and the sha256 of every artifact pip may take, and pip finds
them on whatever index the machine is configured for. Pants 2.17 accepts the latter
(`pip install --requirement ... --no-transitive` with hash checking), so the repository
holds no registry addresses. The metadata block Pants validates the lock with is kept.

    python3 -m tools.setup.hashed_lock PEX_LOCK OUT   (tools/setup/relock runs it)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def convert(pex_lock: str) -> str:
    start = pex_lock.index("\n{") + 1
    header, body = pex_lock[:start], json.loads(pex_lock[start:])
    lines = [line.replace("//", "#", 1) if line.startswith("//") else line for line in header.splitlines()]
    lines = [
        line.replace("pants generate-lockfiles --resolve=python-default", "tools/setup/relock")
        for line in lines
    ]
    out = [
        *lines,
        "",
        "# Every distribution of the resolve, pinned, with the sha256 of each of its artifacts.",
    ]
    (resolve,) = body["locked_resolves"]
    for req in sorted(resolve["locked_requirements"], key=lambda r: r["project_name"]):
        hashes = sorted({f"{a['algorithm']}:{a['hash']}" for a in req["artifacts"]})
        out.append(f"{req['project_name']}=={req['version']} \\")
        out += [f"    --hash={h}" + (" \\" if i < len(hashes) - 1 else "") for i, h in enumerate(hashes)]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m tools.setup.hashed_lock PEX_LOCK OUT", file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    target.write_text(convert(source.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
