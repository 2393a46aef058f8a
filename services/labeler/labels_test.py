from clm.policy import names
from services.labeler.labels import INELIGIBLE_ANNOTATION, node_patch, owns, pod_patch, pod_verdict
from tests.kit import builders as b


def store_for(pod: dict) -> b.Store:
    return b.Store([b.node(pod["spec"]["nodeName"])])


def test_an_eligible_pod_gets_the_label_and_nothing_else_changes() -> None:
    pod = b.pod("solo", labels={"app": "web"})
    verdict = pod_verdict(pod, store_for(pod).lookup)
    assert verdict.eligible
    assert pod_patch(pod, verdict) == {"metadata": {"labels": {names.MIGRATION_ENABLED: "true"}}}
    pod["metadata"]["labels"][names.MIGRATION_ENABLED] = "true"
    assert pod_patch(pod, verdict) is None  # already right: nothing to write


def test_an_ineligible_pod_loses_the_label_and_says_why() -> None:
    pod = b.pod(
        "tty",
        labels={names.MIGRATION_ENABLED: "true", "app": "x"},
        containers=[{**b.container(), "tty": True}],
    )
    verdict = pod_verdict(pod, store_for(pod).lookup)
    assert not verdict.eligible
    patch = pod_patch(pod, verdict)
    assert patch is not None
    assert patch["metadata"]["labels"] == {names.MIGRATION_ENABLED: None}  # only our label, removed
    assert "tty" in patch["metadata"]["annotations"][INELIGIBLE_ANNOTATION]


def test_node_patches() -> None:
    node = b.node("n1", migration_enabled=False)
    assert node_patch(node, capable=True) == {"metadata": {"labels": {names.MIGRATION_ENABLED: "true"}}}
    assert node_patch(b.node("n2"), capable=True) is None
    assert node_patch(b.node("n2"), capable=False) == {
        "metadata": {"labels": {names.MIGRATION_ENABLED: None}}
    }


def test_shards_split_pods_between_replicas_exactly_once() -> None:
    uids = [f"uid-{i}" for i in range(1000)]
    owners = [[s for s in range(3) if owns(uid, s, 3)] for uid in uids]
    assert all(len(o) == 1 for o in owners)
    counts = [sum(1 for o in owners if o == [s]) for s in range(3)]
    assert min(counts) > 250
