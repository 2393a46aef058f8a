"""A stock Debian kernel for the VM, fetched once into a cache and never installed.

`apt-get download` fetches the package this machine's apt resolves `linux-image-amd64` to
(bookworm's 6.1: it has CONFIG_MEM_SOFT_DIRTY, CONFIG_USERFAULTFD, CONFIG_CHECKPOINT_RESTORE),
`dpkg-deb -x` unpacks it beside the download, and `depmod` indexes its modules so the
guest's modprobe (the host's kmod, seen through the shared root) finds them.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("CLM_VM_CACHE", "/var/cache/clm-vm"))
NEEDED_CONFIG = ("CONFIG_MEM_SOFT_DIRTY", "CONFIG_USERFAULTFD", "CONFIG_CHECKPOINT_RESTORE")


class KernelError(RuntimeError):
    pass


@dataclass(frozen=True)
class Kernel:
    version: str
    root: Path  # the unpacked package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.version}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    def module_files(self, *names: str) -> list[Path]:
        """The .ko files that load `names`, dependencies first, each once (built-ins: none)."""
        files: list[Path] = []
        for name in names:  # one per call: modprobe takes what follows a name as its options
            out = subprocess.run(
                ["modprobe", "-d", str(self.root), "-S", self.version, "--show-depends", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise KernelError(f"modprobe cannot resolve {name} in {self.modules}: {out.stderr.strip()}")
            for line in out.stdout.splitlines():
                parts = line.split()
                if parts and parts[0] == "insmod" and Path(parts[1]) not in files:
                    files.append(Path(parts[1]))
        return files


def _run(*argv: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise KernelError(
            f"{' '.join(argv)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return proc.stdout


def kernel_package() -> str:
    """The versioned package apt resolves the kernel metapackage to."""
    out = _run("apt-cache", "depends", "linux-image-amd64")
    found = re.findall(r"Depends: (linux-image-[0-9][^\s]*)", out)
    if not found:
        raise KernelError(f"apt knows no kernel behind linux-image-amd64:\n{out}")
    return found[0]


def ensure_kernel(cache: Path = CACHE) -> Kernel:
    """The cached kernel, fetched and unpacked on first use (under a lock: parallel tests)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        package = kernel_package()
        version = package.removeprefix("linux-image-")
        kernel = Kernel(version, cache / f"kernel-{version}")
        if (kernel.modules / "modules.dep").is_file() and kernel.vmlinuz.is_file():
            return kernel
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            _run("apt-get", "download", "-q", package, cwd=cache)
            debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise KernelError(f"apt-get download {package} left no .deb in {cache}")
        staging = cache / f".kernel-{version}.partial"
        subprocess.run(["rm", "-rf", str(staging)], check=True)
        _run("dpkg-deb", "-x", str(debs[-1]), str(staging))
        _run("depmod", "-b", str(staging), version)
        config = (staging / "boot" / f"config-{version}").read_text()
        missing = [c for c in NEEDED_CONFIG if f"\n{c}=y" not in config]
        if missing:
            raise KernelError(f"{package} lacks {', '.join(missing)}: no pre-copy can be tested on it")
        subprocess.run(["rm", "-rf", str(kernel.root)], check=True)
        staging.rename(kernel.root)
        return kernel
