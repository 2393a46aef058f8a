from __future__ import annotations

from pathlib import Path

import pytest

from services.checkpoint_agent.restore_handler.calls import (
    CallError,
    Exit,
    clone_container,
    parse,
    restore_command,
)

SHIM_CREATE = [
    "--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json", "--log-format", "json",
    "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "abc",
]  # fmt: skip
CONTAINER = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.container-name": "server",
    "io.kubernetes.cri.sandbox-namespace": "games",
    "io.kubernetes.cri.sandbox-name": "mc-0-clone-1",
    "cast.ai/restore": "games/mc-0",
}


def test_the_shims_create_is_read_as_runc_reads_it() -> None:
    call = parse(SHIM_CREATE)
    assert call.command == "create"
    assert call.globals == SHIM_CREATE[:6]
    assert call.bundle == Path("/b")
    assert call.options["--pid-file"] == "/b/init.pid"
    assert call.container_id == "abc"
    assert call.log == Path("/b/log.json")


def test_start_and_options_with_equals() -> None:
    call = parse(["--root=/r", "--systemd-cgroup", "start", "abc"])
    assert (call.command, call.container_id, call.globals) == (
        "start",
        "abc",
        ["--root=/r", "--systemd-cgroup"],
    )


@pytest.mark.parametrize("argv", [[], ["--root", "/r"], ["create", "--bundle", "/b"], ["start", "a", "b"]])
def test_malformed_calls_are_refused(argv: list[str]) -> None:
    with pytest.raises(CallError):
        parse(argv)


def test_create_becomes_a_detached_restore_into_the_shims_bundle() -> None:
    call = parse([*SHIM_CREATE[:-1], "--no-pivot", "abc"])
    argv = restore_command(call, images=Path("/img/criu"), work=Path("/img/work"))
    assert argv == [
        "runc", *SHIM_CREATE[:6], "restore", "--detach", "--bundle", "/b", "--pid-file", "/b/init.pid",
        "--image-path=/img/criu", "--work-path=/img/work", "--tcp-established", "--no-pivot", "abc",
    ]  # fmt: skip


def test_a_clones_container_is_named_by_the_pod_it_restores() -> None:
    assert clone_container(parse(SHIM_CREATE), CONTAINER) == ("games/mc-0", "server")


def test_the_pod_sandbox_runs_as_asked() -> None:
    assert clone_container(parse(SHIM_CREATE), {"io.kubernetes.cri.container-type": "sandbox"}) is None


def test_a_pod_that_is_no_clone_is_refused_with_the_reason() -> None:
    answer = clone_container(
        parse(SHIM_CREATE), {k: v for k, v in CONTAINER.items() if k != "cast.ai/restore"}
    )
    assert isinstance(answer, Exit)
    assert answer.code == 1
    assert "only restores clone pods" in answer.message


def test_a_terminal_is_refused() -> None:
    call = parse([*SHIM_CREATE[:-1], "--console-socket", "/tty.sock", "abc"])
    answer = clone_container(call, CONTAINER)
    assert isinstance(answer, Exit)
    assert "terminal" in answer.message
