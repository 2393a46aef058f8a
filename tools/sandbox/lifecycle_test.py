from __future__ import annotations

from tools.sandbox.lifecycle import after_exit, pod_phase, restart_delay


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
