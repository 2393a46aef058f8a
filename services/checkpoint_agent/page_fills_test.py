from __future__ import annotations

from pathlib import Path

from services.checkpoint_agent.layout import Layout
from services.checkpoint_agent.page_fills import FILLING, PageFills


class Deletes:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, container_id: str) -> None:
        self.deleted.append(container_id)


def test_containers_an_earlier_agent_was_filling_are_stopped_at_start(tmp_path: Path) -> None:
    # Their page streams died with that agent: what did not arrive would read as zeros.
    layout = Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images")
    layout.workdir("m1").mkdir(parents=True)
    (layout.workdir("m1") / FILLING).write_text("c-app\nc-sidecar")
    layout.workdir("m2").mkdir(parents=True)  # a migration with no fill running
    runtime = Deletes()
    fills = PageFills(runtime, layout)  # type: ignore[arg-type]  # only delete is used
    assert fills.stop_orphans() == ["c-app", "c-sidecar"]
    assert runtime.deleted == ["c-app", "c-sidecar"]
    assert not (layout.workdir("m1") / FILLING).exists()
    assert fills.stop_orphans() == []
