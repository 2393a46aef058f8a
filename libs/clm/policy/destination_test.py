from clm.policy.compatibility import DEFAULT_REQUIREMENTS
from clm.policy.destination import choose_destination
from tests.kit import builders as b


def test_the_fullest_compatible_node_that_fits_is_chosen() -> None:
    pod = b.pod("web-0", node="a", containers=[b.container(cpu="1")])
    nodes = [
        b.node("a"),
        b.node("roomy", cpu="8"),
        b.node("snug", cpu="2"),
        b.node("arm", arch="arm64", instance_type="m7g.xlarge"),
        b.node("off", migration_enabled=False),
        b.node("cordoned", unschedulable=True),
        b.node("full", cpu="1"),
    ]
    busy = [b.pod("x", node="full", containers=[b.container(cpu="500m")])]
    chosen, why = choose_destination(pod, nodes[0], nodes, [pod, *busy], DEFAULT_REQUIREMENTS)
    assert chosen == "snug"
    reasons = "\n".join(why)
    assert "arm:" in reasons and "off:" in reasons and "cordoned: cordoned" in reasons and "full:" in reasons


def test_no_node_fits() -> None:
    pod = b.pod("web-0", node="a", containers=[b.container(cpu="64")])
    chosen, why = choose_destination(
        pod, b.node("a"), [b.node("a"), b.node("b")], [pod], DEFAULT_REQUIREMENTS
    )
    assert chosen is None and len(why) == 1 and why[0].startswith("b:")
