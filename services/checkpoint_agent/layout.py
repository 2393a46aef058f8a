"""Where the checkpoint agent keeps things on its node.

`state_dir` is small and durable; `image_dir` is large, ideally a tmpfs (it holds a pod's
memory while it moves):

    state_dir/migrations/<uid>/results/<step>.json   stored outcomes (outcomes.py)
    state_dir/migrations/<uid>/pod.json              the pod's containers (source)
    state_dir/migrations/<uid>/dumped                the images hold the pod (source)
    state_dir/migrations/<uid>/expected              a transfer is expected (destination)
    state_dir/migrations/<uid>/rounds.json           pre-copy: rounds dumped and sent (source)
    state_dir/migrations/<uid>/lazy.json             post-copy: page server ports (source)
    state_dir/migrations/<uid>/filling               post-copy: containers filling (destination)
    state_dir/pods/<pod-uid>/<container>/            bundles of restored containers
    image_dir/out/<uid>/<container>/{criu/,config.json,rootfs.tar}    (source)
    image_dir/in/<uid>/...                                            (destination)
    image_dir/{out,in}/<uid>.rounds/<n>/<container>/criu/             pre-copy rounds
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    state_dir: Path
    image_dir: Path

    def workdir(self, uid: str) -> Path:
        return self.state_dir / "migrations" / uid

    def pod_record(self, uid: str) -> Path:
        return self.workdir(uid) / "pod.json"

    def dumped(self, uid: str) -> Path:
        return self.workdir(uid) / "dumped"

    def expected(self, uid: str) -> Path:
        return self.workdir(uid) / "expected"

    def lazy_record(self, uid: str) -> Path:
        return self.workdir(uid) / "lazy.json"

    def results(self, uid: str) -> Path:
        return self.workdir(uid) / "results"

    def outgoing(self, uid: str) -> Path:
        return self.image_dir / "out" / uid

    def incoming(self, uid: str) -> Path:
        return self.image_dir / "in" / uid

    def rounds_out(self, uid: str) -> Path:
        """Pre-copy: round n's images at <n>/<container>/criu, beside the final dump."""
        return self.image_dir / "out" / f"{uid}.rounds"

    def rounds_in(self, uid: str) -> Path:
        return self.image_dir / "in" / f"{uid}.rounds"

    def rounds_record(self, uid: str) -> Path:
        """Pre-copy: the rounds dumped and sent so far (the final dump stacks on the last)."""
        return self.workdir(uid) / "rounds.json"

    def pod_bundles(self, pod_uid: str) -> Path:
        return self.state_dir / "pods" / pod_uid


def tree_size(root: Path) -> int:
    """Bytes in the regular files under `root`, not through symlinks (a pre-copy dump's
    `parent` link would count an earlier round again)."""
    total = 0
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = Path(top, name)
            if not path.is_symlink():
                total += path.stat().st_size
    return total
