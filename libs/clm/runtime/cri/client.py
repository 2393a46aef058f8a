"""A CRI client over containerd's socket: the calls kubelet makes, typed, with errors that
say which call failed and containerd's own words."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from clm.runtime.cri import api_pb2 as api
from clm.runtime.cri import api_pb2_grpc as rpc


class CriError(RuntimeError):
    def __init__(self, call: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"CRI {call} failed ({code.name}): {details}")
        self.call, self.code, self.details = call, code, details

    @property
    def not_found(self) -> bool:
        return self.code is grpc.StatusCode.NOT_FOUND


class CriClient:
    """One connection to a container runtime's CRI socket (containerd: `[grpc] address`)."""

    def __init__(self, socket: Path | str, *, timeout: float = 120.0) -> None:
        self.socket, self.timeout = Path(socket), timeout
        self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        self._runtime = rpc.RuntimeServiceStub(self._channel)
        self._images = rpc.ImageServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, name: str, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise CriError(name, code, details or "") from None

    # ----- runtime -----

    def version(self) -> api.VersionResponse:
        return self._call("Version", self._runtime.Version, api.VersionRequest())

    def run_pod_sandbox(self, config: api.PodSandboxConfig, *, runtime_handler: str = "") -> str:
        request = api.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return str(self._call("RunPodSandbox", self._runtime.RunPodSandbox, request).pod_sandbox_id)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self._call(
            "StopPodSandbox",
            self._runtime.StopPodSandbox,
            api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
        )

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self._call(
            "RemovePodSandbox",
            self._runtime.RemovePodSandbox,
            api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
        )

    def pod_sandbox_status(self, sandbox_id: str) -> api.PodSandboxStatus:
        request = api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        return self._call("PodSandboxStatus", self._runtime.PodSandboxStatus, request).status

    def pod_sandbox_info(self, sandbox_id: str) -> dict[str, Any]:
        """The runtime's own verbose sandbox status (containerd: netNamespacePath, the spec, ...)."""
        request = api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
        info = self._call("PodSandboxStatus", self._runtime.PodSandboxStatus, request).info
        return dict(json.loads(info["info"])) if "info" in info else {}

    def list_pod_sandboxes(self, labels: dict[str, str] | None = None) -> list[api.PodSandbox]:
        request = api.ListPodSandboxRequest(filter=api.PodSandboxFilter(label_selector=labels or {}))
        return list(self._call("ListPodSandbox", self._runtime.ListPodSandbox, request).items)

    def create_container(
        self, sandbox_id: str, config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig
    ) -> str:
        request = api.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        return str(self._call("CreateContainer", self._runtime.CreateContainer, request).container_id)

    def start_container(self, container_id: str) -> None:
        request = api.StartContainerRequest(container_id=container_id)
        self._call("StartContainer", self._runtime.StartContainer, request)

    def stop_container(self, container_id: str, *, grace_seconds: int = 0) -> None:
        request = api.StopContainerRequest(container_id=container_id, timeout=grace_seconds)
        self._call(
            "StopContainer", self._runtime.StopContainer, request, timeout=self.timeout + grace_seconds
        )

    def remove_container(self, container_id: str) -> None:
        request = api.RemoveContainerRequest(container_id=container_id)
        self._call("RemoveContainer", self._runtime.RemoveContainer, request)

    def container_status(self, container_id: str) -> api.ContainerStatus:
        request = api.ContainerStatusRequest(container_id=container_id)
        return self._call("ContainerStatus", self._runtime.ContainerStatus, request).status

    def container_info(self, container_id: str) -> dict[str, Any]:
        """The runtime's own verbose status (containerd: the pid, the runtime spec, ...)."""
        request = api.ContainerStatusRequest(container_id=container_id, verbose=True)
        info = self._call("ContainerStatus", self._runtime.ContainerStatus, request).info
        return dict(json.loads(info["info"])) if "info" in info else {}

    def list_containers(
        self, labels: dict[str, str] | None = None, *, sandbox_id: str = ""
    ) -> list[api.Container]:
        request = api.ListContainersRequest(
            filter=api.ContainerFilter(label_selector=labels or {}, pod_sandbox_id=sandbox_id)
        )
        return list(self._call("ListContainers", self._runtime.ListContainers, request).containers)

    def runtime_handlers(self) -> set[str]:
        """The runtime handlers the runtime offers (RuntimeClass handlers; "" the default)."""
        response = self._call("Status", self._runtime.Status, api.StatusRequest(verbose=False))
        return {h.name for h in response.runtime_handlers}

    # ----- images -----

    def image_present(self, image: str) -> bool:
        request = api.ImageStatusRequest(image=api.ImageSpec(image=image))
        return bool(self._call("ImageStatus", self._images.ImageStatus, request).image.id)

    def images(self) -> Iterable[str]:
        for image in self._call("ListImages", self._images.ListImages, api.ListImagesRequest()).images:
            yield from image.repo_tags


def state_name(state: int) -> str:
    """CONTAINER_RUNNING -> running (the words kubectl uses)."""
    return api.ContainerState.Name(state).removeprefix("CONTAINER_").lower()
