"""What the VM boots: an initramfs that mounts this machine's root read-only (9p) under a
tmpfs overlay and switches to it, and a disk image with the Python the guest runs.

The guest's programs (runc, CRIU, nats-server, iproute2, nftables) are the host's, read
through the shared root. Python is not: under software emulation every file lookup costs a
trip through 9p, and importing the agents that way took 30-60 s a process. The interpreter's
standard library and the packages the guest program imports go on an ext4 image instead,
read at disk speed; the host's own sys.path follows them, for anything imported late.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.kit.vm.kernel import Kernel

GUEST_PY = "/opt/clm-py"
# What the initramfs needs to reach the shared root and the Python image.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_blk", "ext4")
# What the guest's node agents, CRIU and the test network use (most would also load on demand).
GUEST_MODULES = (
    "veth",
    "bridge",
    "br_netfilter",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nf_conntrack",
    "iptable_filter",
    "iptable_nat",
    "ip6table_filter",
    "xt_conntrack",
    "xt_mark",
    "unix_diag",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "raw_diag",
    "netlink_diag",
    "af_packet_diag",
    "tun",
)
STDLIB_LEFT_OUT = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "site-packages",
}


@dataclass(frozen=True)
class GuestPython:
    image: Path
    pythonpath: list[str]  # in the guest


def imported_top_level(modules: Sequence[str]) -> set[str]:
    """The top-level names importing `modules` brings in (asked of a fresh interpreter)."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _path_entries() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    seen: list[Path] = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if path.is_dir() and path != stdlib and stdlib not in path.parents and path not in seen:
            seen.append(path)
    return seen


def build_python_image(work: Path, modules: Sequence[str]) -> GuestPython:
    """An ext4 image holding the standard library and, from each sys.path entry, the
    top-level packages `modules` import (with the entry's package metadata)."""
    tree = work / "python-tree"
    shutil.rmtree(tree, ignore_errors=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copytree(
        stdlib,
        tree / "lib" / version,
        ignore=lambda d, names: [n for n in names if Path(d) == stdlib and n in STDLIB_LEFT_OUT],
        symlinks=True,
    )
    wanted = imported_top_level(modules)
    pythonpath = []
    for index, entry in enumerate(_path_entries()):
        target = tree / "path" / str(index)
        target.mkdir(parents=True)
        for child in entry.iterdir():
            name = child.name.split(".")[0]
            keep = child.name.endswith((".dist-info", ".pth")) or (
                name in wanted and (child.is_dir() or child.suffix in (".py", ".so"))
            )
            if not keep:
                continue
            if child.is_dir():
                shutil.copytree(
                    child, target / child.name, symlinks=True, ignore=shutil.ignore_patterns("*.pex")
                )
            else:
                shutil.copy2(child, target / child.name)
        pythonpath.append(f"{GUEST_PY}/path/{index}")
    # Anything imported late and not copied is still found, slowly, through the shared root:
    # after the standard library (a .pth file), or every import would look there first.
    site = tree / "lib" / version / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    (site / "clm-host-path.pth").write_text("".join(f"{p}\n" for p in _path_entries()))
    size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink())
    image = work / "python.ext4"
    image.unlink(missing_ok=True)
    blocks_mib = size * 13 // 10 // 2**20 + 64
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "clm-py", "-d", str(tree), str(image), f"{blocks_mib}M"],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree, ignore_errors=True)
    return GuestPython(image, pythonpath)


def stage2_script(kernel: Kernel, python: GuestPython, argv: Sequence[str], env: dict[str, str]) -> str:
    """The guest's first program in the shared root: the mounts a node has, the kernel's
    modules, then `argv` under the image's Python; its exit code goes to the console."""
    interpreter = os.path.realpath(sys.executable)
    environment = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "PYTHONHOME": GUEST_PY,
        "PYTHONPATH": ":".join(python.pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
        **env,
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())
    command = " ".join(shlex.quote(a) for a in [interpreter, *argv])
    modules = " ".join(GUEST_MODULES)
    return f"""#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs -o size=75% tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs -o size=50% tmpfs /tmp; mount -t cgroup2 cgroup2 /sys/fs/cgroup
# A link, not a bind mount: containers bind /usr, and CRIU cannot dump a mount inside it.
mkdir -p /lib/modules && ln -sfn {kernel.modules} /lib/modules/{kernel.version}
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in {modules}; do modprobe -q $m || echo "guest: no module $m"; done
ip link set lo up
echo "CLM-GUEST-READY $(cut -d' ' -f1 /proc/uptime)"
cd /tmp
env -i {exports} {command} </dev/null
echo "CLM-GUEST-EXIT $?"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


def init_script() -> str:
    """The initramfs's /init (busybox): the shared root under a tmpfs overlay, the Python
    image on /dev/vda, then the stage-2 script in the new root."""
    return f"""#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "initramfs: insmod $m failed"; done
mkdir -p /host /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host \\
  || echo "initramfs: 9p failed"
mount -t tmpfs tmpfs /upper && mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot \\
  || echo "initramfs: overlay failed"
mkdir -p /newroot{GUEST_PY} && mount -t ext4 -o ro /dev/vda /newroot{GUEST_PY} \\
  || echo "initramfs: no python image"
cp /stage2 /newroot/clm-stage2 && chmod +x /newroot/clm-stage2
umount /proc /sys /dev 2>/dev/null
exec switch_root /newroot /clm-stage2
"""


def build_initramfs(work: Path, kernel: Kernel, stage2: str) -> Path:
    root = work / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    (root / "modules").mkdir()
    busybox = shutil.which("busybox")
    if busybox is None:
        raise FileNotFoundError("busybox is missing: run tools/setup/install-system-deps")
    shutil.copy2(busybox, root / "bin" / "busybox")
    order = []
    for ko in kernel.module_files(*BOOT_MODULES):
        shutil.copy2(ko, root / "modules" / ko.name)
        order.append(ko.name)
    (root / "modules" / "order").write_text("\n".join(order) + "\n")
    (root / "init").write_text(init_script())
    (root / "stage2").write_text(stage2)
    (root / "init").chmod(0o755)
    image = work / "initramfs.cpio"
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with image.open("wb") as out:
        subprocess.run(
            [busybox, "cpio", "-o", "-H", "newc"],
            cwd=root,
            input=names,
            stdout=out,
            check=True,
            stderr=subprocess.DEVNULL,
        )
    shutil.rmtree(root, ignore_errors=True)
    return image
