from __future__ import annotations

from services.checkpoint_agent.criu_cache import filesystem_of, kdat_cache_problem

HOST = """\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
25 22 0:22 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755
30 25 0:40 / /run/containerd rw shared:9 - tmpfs tmpfs rw
"""
# A container's root on overlay; /run/clm is a hostPath, /run itself the image's directory.
CONTAINER = """\
600 500 0:88 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
610 600 0:22 /clm /run/clm rw,nosuid - tmpfs tmpfs rw
"""


def test_the_cache_lives_where_run_is_a_tmpfs() -> None:
    assert filesystem_of("/run/criu.kdat", HOST) == "tmpfs"
    assert kdat_cache_problem(HOST) is None


def test_a_container_without_its_own_run_mount_cannot_keep_the_cache() -> None:
    # A tmpfs mounted below /run does not hold /run/criu.kdat.
    assert filesystem_of("/run/criu.kdat", CONTAINER) == "overlay"
    problem = kdat_cache_problem(CONTAINER)
    assert problem is not None and "overlay" in problem and "mount a tmpfs at /run" in problem


def test_the_mount_on_top_counts() -> None:
    stacked = CONTAINER + "620 600 0:99 / /run rw - tmpfs tmpfs rw\n"
    assert kdat_cache_problem(stacked) is None
    assert filesystem_of("/running/x", stacked) == "overlay"  # a prefix is not a parent
