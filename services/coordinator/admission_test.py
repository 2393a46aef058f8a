from services.coordinator.admission import Limits, admit


def mig(name: str, phase: str | None, src: str, dst: str, created: str = "2026-01-01T00:00:00Z") -> dict:
    status = {"phase": phase} if phase else {}
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"podName": name, "sourceNode": src, "destinationNode": dst},
        "status": status,
    }


def names(items: list) -> list[str]:
    return [m["metadata"]["name"] for m in items]


def test_running_migrations_keep_their_slots_and_pending_ones_wait_with_a_reason() -> None:
    items = [
        mig("running", "Dumping", "a", "b"),
        mig("new-from-a", None, "a", "c", "2026-01-01T00:00:01Z"),
        mig("new-to-b", "Pending", "d", "b", "2026-01-01T00:00:02Z"),
        mig("free", None, "e", "f", "2026-01-01T00:00:03Z"),
        mig("done", "Finished", "a", "b"),
    ]
    admitted, waiting = admit(items, Limits(per_source=1, per_destination=1, cluster=10))
    assert names(admitted) == ["running", "free"]
    reasons = {m["metadata"]["name"]: why for m, why in waiting}
    assert "leaving a (limit 1)" in reasons["new-from-a"]
    assert "arriving on b (limit 1)" in reasons["new-to-b"]


def test_cluster_limit_admits_oldest_first() -> None:
    items = [mig(f"m{i}", None, f"s{i}", f"d{i}", f"2026-01-01T00:00:0{i}Z") for i in range(4)]
    admitted, waiting = admit(items, Limits(per_source=5, per_destination=5, cluster=2))
    assert names(admitted) == ["m0", "m1"]
    assert [m["metadata"]["name"] for m, _ in waiting] == ["m2", "m3"]
    assert "cluster limit 2" in waiting[0][1]
