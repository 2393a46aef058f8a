"""Boot the VM under qemu's software emulation and run one program in it.

KVM here is a PVM hypervisor that cannot run a stock kernel, so the guest runs under TCG
(multi-threaded: one host thread per vCPU). The guest prints its program's output and exit
code on the serial console, which qemu writes to a file; nothing else crosses back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.kit.vm.guest_image import build_initramfs, build_python_image, stage2_script
from tests.kit.vm.kernel import ensure_kernel

EXTRA_APPEND = os.environ.get("CLM_VM_APPEND", "")
# Everything in the guest runs on one emulated CPU: its NATS server may answer a JetStream
# request later than nats-py's 5 s while four agents start (tests/kit/agents.py passes it on).
GUEST_ENV = {"CLM_NATS_REQUEST_TIMEOUT_SECONDS": "60"}
EXIT = re.compile(r"^CLM-GUEST-EXIT (\d+)", re.M)


class GuestError(RuntimeError):
    pass


@dataclass(frozen=True)
class GuestRun:
    exit_code: int
    console: str
    seconds: float


def missing_requirements() -> list[str]:
    return [
        tool
        for tool in ("qemu-system-x86_64", "busybox", "modprobe", "depmod", "mkfs.ext4", "apt-get")
        if shutil.which(tool) is None
    ]


def run_in_vm(
    work: Path,
    argv: Sequence[str],
    *,
    modules: Sequence[str],
    env: dict[str, str] | None = None,
    memory_mib: int = 3072,
    # One vCPU: with two, a guest once hung with both vCPUs in a soft lockup (nats-server
    # and python, ~75 s after boot, no progress for 450 s; 1 boot in 6). One cannot wait
    # on the other.
    cpus: int = 1,
    timeout: float = 900,
) -> GuestRun:
    """Run `python argv...` in a fresh VM (`modules`: what it imports, for the Python image)."""
    work.mkdir(parents=True, exist_ok=True)
    kernel = ensure_kernel()
    python = build_python_image(work, modules)
    initrd = build_initramfs(work, kernel, stage2_script(kernel, python, argv, {**GUEST_ENV, **(env or {})}))
    console = work / "console.log"
    console.write_text("")
    qemu = [
        "qemu-system-x86_64",
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-smp", str(cpus),
        "-m", str(memory_mib),
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-net", "none",
        "-serial", f"file:{console}",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd),
        # THP off: with it, 6.1 counts whole huge pages as dirty (each round looks bigger).
        # CLM_VM_APPEND: more kernel arguments (e.g. loglevel=5 to see a soft lockup's stack).
        "-append", f"console=ttyS0 quiet panic=-1 transparent_hugepage=never {EXTRA_APPEND}",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
        "-drive", f"file={python.image},if=virtio,format=raw,readonly=on",
    ]  # fmt: skip
    started = time.monotonic()
    with (work / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(qemu, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            text = console.read_text(errors="replace")
            raise GuestError(
                f"the VM did not finish within {timeout:.0f}s; its console ends:\n{text[-4000:]}"
            ) from None
    text = console.read_text(errors="replace")
    found = EXIT.search(text)
    if found is None:
        qemu_said = (work / "qemu.log").read_text(errors="replace")[-2000:]
        raise GuestError(
            f"the VM stopped (qemu exit {proc.returncode}) before its program ended:\n"
            f"{text[-4000:]}\n{qemu_said}"
        )
    return GuestRun(int(found.group(1)), text, time.monotonic() - started)
