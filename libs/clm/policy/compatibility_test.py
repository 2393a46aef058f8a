"""The seed's compatible and incompatible examples, one case each, plus the helper."""

import pytest

from clm.policy import names
from clm.policy.compatibility import Profile, Requirements, class_key, compatible
from clm.policy.instance_families import compatible_families, generation_set
from tests.kit import builders as b

CASES = [
    ("m5 with c5", dict(instance_type="m5.large"), dict(instance_type="c5.xlarge"), []),
    ("m3 with c3", dict(instance_type="m3.large"), dict(instance_type="c3.large"), []),
    ("m4 with r4", dict(instance_type="m4.large"), dict(instance_type="r4.large"), []),
    (
        "c3 with c5",
        dict(instance_type="c3.large"),
        dict(instance_type="c5.large"),
        ["instance-generation-mismatch"],
    ),
    (
        "m5 with m4",
        dict(instance_type="m5.large"),
        dict(instance_type="m4.large"),
        ["instance-generation-mismatch"],
    ),
    (
        "graviton2 with graviton3",
        dict(arch="arm64", instance_type="m6g.large"),
        dict(arch="arm64", instance_type="c7g.large"),
        ["instance-generation-mismatch"],
    ),
    (
        "graviton2 family mix",
        dict(arch="arm64", instance_type="m6g.large"),
        dict(arch="arm64", instance_type="r6gd.large"),
        [],
    ),
    (
        "amd64 to arm64",
        dict(instance_type="m6i.large"),
        dict(arch="arm64", instance_type="m6g.large"),
        ["arch-mismatch", "instance-generation-mismatch"],
    ),
    ("across subnets", dict(subnet="subnet-1"), dict(subnet="subnet-2"), ["subnet-mismatch"]),
    (
        "custom networking, same zone",
        dict(subnet="s1", labels={names.CUSTOM_NETWORK: "true"}),
        dict(subnet="s2"),
        [],
    ),
    (
        "custom networking across zones",
        dict(zone="us-east-1a", labels={names.CUSTOM_NETWORK: "true"}),
        dict(zone="us-east-1b"),
        ["zone-mismatch"],
    ),
    ("destination without the label", {}, dict(migration_enabled=False), ["node-not-enabled"]),
    ("Kubernetes 1.29", {}, dict(kubelet="v1.29.8-eks-1"), ["kubernetes-too-old"]),
    ("containerd 1.7", dict(runtime="containerd://1.7.22"), {}, ["runtime-unsupported"]),
    ("cri-o", {}, dict(runtime="cri-o://1.30.0"), ["runtime-unsupported"]),
    ("Amazon Linux 2", {}, dict(os_image="Amazon Linux 2"), ["os-image-unsupported"]),
]


@pytest.mark.parametrize(("case", "src", "dst", "codes"), CASES, ids=[c[0] for c in CASES])
def test_seed_examples(case, src, dst, codes) -> None:
    problems = compatible(b.node("src", **src), b.node("dst", **dst))
    assert sorted(p.code for p in problems) == sorted(codes), problems


def test_reasons_name_both_sides() -> None:
    [problem] = compatible(b.node("a", instance_type="c3.large"), b.node("b", instance_type="c5.large"))
    assert "c3" in problem.message and "c5" in problem.message


def test_generic_profile_works_off_aws() -> None:
    req = Requirements(profile=Profile.GENERIC)
    src = b.node("a", instance_type="n2-standard-4", subnet="", os_image="Debian GNU/Linux 12")
    dst = b.node("b", instance_type="e2-standard-8", subnet="", os_image="Ubuntu 24.04")
    assert compatible(src, dst, req) == []
    assert [p.code for p in compatible(src, dst)] != []  # the EKS profile refuses them
    assert [p.code for p in compatible(src, b.node("c", arch="arm64"), req)] == ["arch-mismatch"]


def test_same_node_is_not_a_destination() -> None:
    assert [p.code for p in compatible(b.node("a"), b.node("a"))] == ["same-node"]


def test_compatible_instance_helper() -> None:
    helper = compatible_families("m5")
    assert {"m5", "c5", "r5", "i5"} <= set(helper)
    assert not {"r4", "c4", "m4", "c3", "m5a"} & set(helper)
    assert compatible_families("c3") == sorted(compatible_families("m3"))
    with pytest.raises(KeyError, match="unknown instance family"):
        compatible_families("zz9")


def test_every_family_is_in_exactly_one_set() -> None:
    assert generation_set("m7i-flex.large") == "intel-gen7"
    assert generation_set("c5n.18xlarge") == "intel-gen5"
    assert generation_set("u-6tb1.metal") is None


def test_class_key_groups_interchangeable_nodes() -> None:
    req = Requirements()
    assert class_key(b.node("a", instance_type="m5.large"), req) == class_key(
        b.node("b", instance_type="c5.2xlarge"), req
    )
    assert class_key(b.node("a"), req) != class_key(b.node("b", subnet="other"), req)
