"""The clone pod: its name and spec come from the policy core (`-clone-N`, `cast.ai/restore`);
this creates it when the protocol says, and hands the workload over to it at the end.

A Deployment's (or any other owner's) clone is created before the dump, so a refusal fails
the migration before anything freezes; a StatefulSet pod's namesake only after the commit
point, once the source object is deleted (`protocol.clone_before_dump`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from clm.contracts import PodCreateFailed, PodCreateFinished
from clm.contracts.protocol import StepFailed
from clm.policy import objects as o
from clm.policy.names import RESTORE
from clm.policy.naming import clone_name, clone_spec
from services.coordinator.recorder import StatusRecorder, in_thread

log = logging.getLogger(__name__)
# After the restore, kubelet reports the clone Running within its next sync.
KUBELET_REPORT_SECONDS = 30.0
KUBELET_POLL_SECONDS = 0.2


class Clones:
    def __init__(self, record: StatusRecorder) -> None:
        self.record = record
        self.kube = record.kube

    @property
    def _pod_name(self) -> str:
        return str(self.record.spec["podName"])

    async def create_before_dump(self) -> None:
        record, namespace = self.record, self.record.namespace
        dst = record.status["destinationNode"]
        pod = await in_thread(self.kube.get_pod, namespace, self._pod_name)
        if pod is None:
            raise StepFailed("the source pod disappeared", stage="pod-create")
        name = record.status.get("clonePod")
        if not name:
            taken = await in_thread(self.kube.pod_names, namespace)
            name = clone_name(self._pod_name, record.status.get("ownerKind", ""), taken)
            await record.patch(clonePod=name)
        spec = clone_spec(pod, name=name, node=dst)
        try:
            if spec.problems:
                raise ValueError("; ".join(p.message for p in spec.problems))
            await in_thread(self.kube.create_pod, namespace, spec.pod)
        except Exception as exc:  # - any API refusal is a failed pod creation
            await record.emit(
                "pod-create-failed",
                PodCreateFailed,
                f"clone {name}: {exc}",
                clone_pod=name,
                node=dst,
                error=str(exc)[:1000],
            )
            raise StepFailed(f"creating the clone pod {name} failed: {exc}", stage="pod-create") from None
        await record.emit(
            "pod-create-finished",
            PodCreateFinished,
            f"clone pod {name} created on {dst}",
            clone_pod=name,
            node=dst,
        )

    async def replace_after_commit(self) -> None:
        """A StatefulSet pod: delete the source object, then create its namesake."""
        record = self.record
        source = record.status.get("sourcePodSpec")
        current = await in_thread(self.kube.get_pod, record.namespace, self._pod_name)
        # Repeated after a crash, the name may already be the namesake's: never delete that.
        if current is not None and (source is None or o.uid(current) == o.uid(source)):
            await in_thread(self.kube.delete_pod, record.namespace, self._pod_name)
        if not record.status.get("clonePod"):
            await record.patch(clonePod=self._pod_name)
        if record.emitted("pod-create-finished"):
            return
        dst = record.status["destinationNode"]
        if source is None:
            raise StepFailed("the StatefulSet pod's spec was not kept", stage="pod-create")
        spec = clone_spec(source, name=self._pod_name, node=dst)
        await in_thread(self.kube.create_pod, record.namespace, spec.pod)
        await record.emit(
            "pod-create-finished",
            PodCreateFinished,
            f"pod {self._pod_name} recreated on {dst}",
            clone_pod=self._pod_name,
            node=dst,
        )

    async def hand_over(self, *, kubelet_reports: bool = False) -> str:
        """The clone is the pod now: running with the pod's IP, the source object gone. Where
        kubelet runs the clone (`kubelet_reports`), its status is kubelet's to write: the move
        waits (a while) for kubelet to report it Running; elsewhere the coordinator writes it."""
        record = self.record
        clone = record.status["clonePod"]
        if kubelet_reports:
            await self._wait_reported_running(clone)
        else:
            await in_thread(self.kube.set_pod_running, record.namespace, clone, record.status.get("podIP"))
        if clone != self._pod_name:
            await in_thread(self.kube.delete_pod, record.namespace, self._pod_name)
        return str(clone)

    async def _wait_reported_running(self, clone: str) -> None:
        deadline = time.monotonic() + KUBELET_REPORT_SECONDS
        while time.monotonic() < deadline:
            pod = await in_thread(self.kube.get_pod, self.record.namespace, clone)
            if pod is not None and o.status(pod).get("phase") == "Running" and o.status(pod).get("podIP"):
                return
            await asyncio.sleep(KUBELET_POLL_SECONDS)
        log.warning("kubelet has not reported the clone Running", extra={"clone": clone})
        await self.record.patch(message=f"restored, but kubelet has not reported {clone} Running yet")

    async def remove_namesake(self) -> None:
        """A StatefulSet namesake whose restore failed: it never ran, and its controller makes
        the pod afresh once it is gone."""
        if self.record.status.get("clonePod") == self._pod_name:
            await in_thread(self.kube.delete_pod, self.record.namespace, self._pod_name)

    async def end_every_copy(self) -> None:
        """A move that failed past its commit point: no copy can run again. The clone was
        stopped without its memory; the source is frozen with a state its clients have moved
        past (on a containerd node it would stay frozen, reported Running, for ever). Both
        objects go, so that the pod's controller starts it afresh."""
        record = self.record
        clone = record.status.get("clonePod")
        if clone and clone != self._pod_name:
            await in_thread(self.kube.delete_pod, record.namespace, clone)
        current = await in_thread(self.kube.get_pod, record.namespace, self._pod_name)
        if current is not None and self._is_ours(current):
            await in_thread(self.kube.delete_pod, record.namespace, self._pod_name)

    def _is_ours(self, pod: dict[str, Any]) -> bool:
        """The pod's name holds the source or this move's namesake, not a pod its StatefulSet
        made afresh since (a repeated run must not delete that). A Deployment's pod name is
        its own: no controller makes it again."""
        source = self.record.status.get("sourcePodSpec")
        if source is None or o.uid(pod) == o.uid(source):
            return True
        return bool(o.annotations(pod).get(RESTORE)) and o.spec(pod).get(
            "nodeName"
        ) == self.record.status.get("destinationNode")

    async def remove(self) -> None:
        """Rollback: a clone that never ran goes (a StatefulSet's namesake does not exist yet)."""
        clone = self.record.status.get("clonePod")
        if clone and clone != self._pod_name:
            await in_thread(self.kube.delete_pod, self.record.namespace, clone)
