import pytest

from clm.policy.scheduling import fits
from tests.kit import builders as b


def codes(problems) -> list[str]:
    return sorted(p.code for p in problems)


def test_fits_when_resources_allow_and_not_otherwise() -> None:
    node = b.node("n", cpu="2", memory="4Gi")
    existing = [b.pod("e", containers=[b.container(cpu="1500m", memory="3Gi")])]
    assert fits(b.pod(containers=[b.container(cpu="500m", memory="1Gi")]), node, existing) == []
    too_big = b.pod(containers=[b.container(cpu="600m", memory="2Gi")])
    assert codes(fits(too_big, node, existing)) == ["insufficient-cpu", "insufficient-memory"]


def test_pod_count_limit() -> None:
    node = b.node("n", pods="1")
    assert codes(fits(b.pod(), node, [b.pod("other")])) == ["insufficient-pods"]


def test_init_containers_count_by_peak_not_sum() -> None:
    node = b.node("n", cpu="1")
    pod = b.pod(
        containers=[b.container(cpu="400m")],
        init_containers=[b.container("i1", cpu="900m"), b.container("i2", cpu="900m")],
    )
    assert fits(pod, node, []) == []
    pod["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] = "1100m"
    assert codes(fits(pod, node, [])) == ["insufficient-cpu"]


def test_cordoned_nodes_are_refused() -> None:
    assert codes(fits(b.pod(), b.node("n", unschedulable=True), [])) == ["cordoned"]


@pytest.mark.parametrize(
    ("toleration", "ok"),
    [
        (None, False),
        ({"key": "dedicated", "operator": "Equal", "value": "db"}, True),
        ({"key": "dedicated", "operator": "Equal", "value": "web"}, False),
        ({"key": "dedicated", "operator": "Exists"}, True),
        ({"operator": "Exists"}, True),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),
    ],
)
def test_taints_need_tolerations(toleration, ok) -> None:
    node = b.node("n", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    pod = b.pod(tolerations=[toleration] if toleration else [])
    assert (fits(pod, node, []) == []) is ok


def test_prefer_no_schedule_taints_do_not_block() -> None:
    node = b.node("n", taints=[{"key": "x", "effect": "PreferNoSchedule"}])
    assert fits(b.pod(), node, []) == []


def test_node_selector_and_required_affinity() -> None:
    node = b.node("n", labels={"disk": "ssd", "gen": "5"})
    assert fits(b.pod(nodeSelector={"disk": "ssd"}), node, []) == []
    assert codes(fits(b.pod(nodeSelector={"disk": "hdd"}), node, [])) == ["affinity"]

    def affinity(*exprs, fields=()):
        term = {"matchExpressions": list(exprs)}
        if fields:
            term["matchFields"] = list(fields)
        return {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        }

    ok = [
        affinity({"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}),
        affinity({"key": "disk", "operator": "NotIn", "values": ["hdd"]}),
        affinity({"key": "gen", "operator": "Gt", "values": ["4"]}),
        affinity({"key": "gpu", "operator": "DoesNotExist"}),
        affinity(fields=[{"key": "metadata.name", "operator": "In", "values": ["n"]}]),
    ]
    bad = [
        affinity({"key": "disk", "operator": "In", "values": ["hdd"]}),
        affinity({"key": "gen", "operator": "Lt", "values": ["5"]}),
        affinity({"key": "gpu", "operator": "Exists"}),
        affinity(fields=[{"key": "metadata.name", "operator": "In", "values": ["other"]}]),
    ]
    for a in ok:
        assert fits(b.pod(affinity=a), node, []) == [], a
    for a in bad:
        assert codes(fits(b.pod(affinity=a), node, [])) == ["affinity"], a


def test_zone_pins_from_volumes() -> None:
    node = b.node("n", zone="us-east-1a")
    assert fits(b.pod(), node, [], zones=frozenset({"us-east-1a"})) == []
    assert codes(fits(b.pod(), node, [], zones=frozenset({"us-east-1b"}))) == ["zone"]
