"""The informer (list + watch through the official client) against the Kubernetes API
emulator over HTTP: it follows creates, changes and deletes; a watch that ends is resumed
without reporting anything again; when the API comes back without the history the watch
needs (410 Gone), it lists again and reports only what really changed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from kubernetes import client

from clm.runtime.informer import Informer, Key, Obj, Source
from tools.kube_emulator.testing import EmulatorThread, api_client


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, Key, bool]] = []  # kind, key, deleted
        self.lock = threading.Lock()

    def __call__(self, kind: str, key: Key, obj: Obj | None) -> None:
        with self.lock:
            self.changes.append((kind, key, obj is None))

    def take(self) -> list[tuple[str, Key, bool]]:
        with self.lock:
            out, self.changes = self.changes, []
        return out


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def config_map(name: str, value: str) -> dict:
    return {"metadata": {"name": name, "namespace": "default"}, "data": {"v": value}}


def test_informer_follows_changes_and_survives_watch_ends_and_lost_history(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    emulator = EmulatorThread(state_file=state).start()
    port = int(emulator.url.rsplit(":", 1)[1])
    api = api_client(emulator.url)
    core = client.CoreV1Api(api)
    for name in ("a", "b", "c"):
        core.create_namespaced_config_map("default", config_map(name, "1"))
    recorder = Recorder()
    informer = Informer(Source("ConfigMap", core.list_config_map_for_all_namespaces), recorder).start()
    try:
        assert informer.synced.wait(10)
        assert sorted(recorder.take()) == [("ConfigMap", ("default", n), False) for n in ("a", "b", "c")]

        core.patch_namespaced_config_map("b", "default", {"data": {"v": "2"}})
        core.delete_namespaced_config_map("c", "default")
        core.create_namespaced_config_map("default", config_map("d", "1"))
        wait_for(lambda: len(recorder.changes) == 3, "three watch events")
        assert recorder.take() == [
            ("ConfigMap", ("default", "b"), False),
            ("ConfigMap", ("default", "c"), True),
            ("ConfigMap", ("default", "d"), False),
        ]
        assert informer.get("default", "b")["data"] == {"v": "2"}
        assert informer.get("default", "c") is None

        # The API goes away (every watch ends), and while it is away one object changes
        # and one disappears; it comes back on the same address with no history.
        emulator.stop()
        saved = orjson.loads(state.read_bytes())
        kept = []
        for obj in saved["objects"]:
            name = obj["metadata"]["name"]
            if obj.get("kind") == "ConfigMap" and name == "d":
                continue
            if obj.get("kind") == "ConfigMap" and name == "a":
                obj["data"] = {"v": "changed-while-away"}
                obj["metadata"]["resourceVersion"] = str(int(saved["resourceVersion"]) + 1)
            kept.append(obj)
        saved.update(objects=kept, resourceVersion=int(saved["resourceVersion"]) + 1)
        state.write_bytes(orjson.dumps(saved))
        relists = informer.relists
        emulator = EmulatorThread(state_file=state, port=port).start()

        # The relist is counted once every difference it found has been reported.
        wait_for(lambda: informer.relists > relists, "a fresh list after 410 Gone", timeout=40)
        # Only what differs is reported again: b (unchanged) is not.
        assert sorted(recorder.take()) == [
            ("ConfigMap", ("default", "a"), False),
            ("ConfigMap", ("default", "d"), True),
        ]
        assert informer.get("default", "a")["data"] == {"v": "changed-while-away"}

        # And it watches again from there.
        core.patch_namespaced_config_map("b", "default", {"data": {"v": "3"}})
        wait_for(lambda: len(recorder.changes) == 1, "the watch resumed")
        assert recorder.take() == [("ConfigMap", ("default", "b"), False)]
    finally:
        informer.stop()
        emulator.stop()
