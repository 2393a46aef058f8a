from __future__ import annotations

import subprocess
import sys
import time

from tools.sandbox.lifecycle import after_exit, exit_code, pod_phase, restart_delay


def test_restart_policies_as_kubelet_applies_them() -> None:
    assert after_exit(None, 0) == "restart"  # Always is the default
    assert after_exit("Always", 1) == "restart"
    assert after_exit("OnFailure", 1) == "restart"
    assert after_exit("OnFailure", 0) == "Succeeded"
    assert after_exit("Never", 0) == "Succeeded"
    assert after_exit("Never", 137) == "Failed"


def test_crash_loop_back_off() -> None:
    assert [restart_delay(n) for n in range(8)] == [0, 10, 20, 40, 80, 160, 300, 300]


def test_pod_phase_once_every_container_is_done() -> None:
    assert pod_phase(["Succeeded", None]) is None
    assert pod_phase(["Succeeded", "Succeeded"]) == "Succeeded"
    assert pod_phase(["Succeeded", "Failed"]) == "Failed"
    assert pod_phase([]) is None


def _reaped(pid: int) -> int | None:
    deadline = time.monotonic() + 10
    code = None
    while code is None and time.monotonic() < deadline:
        code = exit_code(pid)
        time.sleep(0.01)
    return code


def test_exit_codes_of_children_and_of_strangers() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert _reaped(child.pid) == 3
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    assert _reaped(killed.pid) == 137
    assert exit_code(1) is None  # init is nobody's child
