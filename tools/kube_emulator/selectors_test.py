import pytest

from tools.kube_emulator.selectors import SelectorError, field_selector, label_selector


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("env in (prod, staging),tier", {"env": "prod", "tier": "x"}, True),
        ("env in (prod,staging),tier", {"env": "dev", "tier": "x"}, False),
        ("env notin (prod)", {}, True),
        ("!live.cast.ai/migration-enabled", {"live.cast.ai/migration-enabled": "true"}, False),
        ("live.cast.ai/migration-enabled=true", {"live.cast.ai/migration-enabled": "true"}, True),
        ("", {"a": "b"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict, expected: bool) -> None:
    assert label_selector(selector)(labels) is expected


def test_bad_label_selector() -> None:
    with pytest.raises(SelectorError):
        label_selector("app in prod")


def test_field_selectors() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running"},
    }
    assert field_selector("spec.nodeName=n1,status.phase=Running")(pod)
    assert not field_selector("spec.nodeName!=n1")(pod)
    assert field_selector("metadata.name=p,metadata.namespace=ns")(pod)
    assert field_selector("spec.nodeName=")({"spec": {}})
