"""Whether CRIU can keep its kernel facts between runs.

Each CRIU process starts by learning what the kernel can do (`kerndat_init`); without its
cache that includes running `iptables -L` and costs ~35-40 ms here, in the freeze of every
dump, restore and lazy-pages daemon. CRIU keeps the cache as /run/criu.kdat only when /run
is a tmpfs (criu/kerndat.c `kerndat_save_cache`: a file that outlives a reboot could hold
another kernel's facts). Nodes have /run on tmpfs, but a container's /run is its image's
directory unless the pod mounts one: the DaemonSet mounts a memory-backed emptyDir there.
"""

from __future__ import annotations

from pathlib import Path

KDAT_FILE = "/run/criu.kdat"


def filesystem_of(path: str, mountinfo: str) -> str | None:
    """The filesystem type of the mount that holds `path` (an absolute path whose symlinks
    are resolved), from /proc/self/mountinfo."""
    found, best = None, -1
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        # The last of equal mount points is the one on top.
        if inside and len(mount_point) >= best:
            found, best = fields[fields.index("-") + 1], len(mount_point)
    return found


def kdat_cache_problem(mountinfo: str | None = None) -> str | None:
    """Why CRIU cannot keep its kernel facts here, or None when it can."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    fstype = filesystem_of(KDAT_FILE, mountinfo)
    if fstype == "tmpfs":
        return None
    return (
        f"/run is on {fstype or 'an unknown filesystem'}, not tmpfs: CRIU cannot keep its kernel "
        "facts (/run/criu.kdat) and probes the kernel again in every dump and restore (~40 ms of each "
        "freeze); mount a tmpfs at /run (the DaemonSet mounts a memory-backed emptyDir there)"
    )
