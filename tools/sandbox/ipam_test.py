import pytest

from tools.sandbox.ipam import Ipam, IpamExhausted


def test_addresses_held_by_pods_or_reserved_are_never_given_twice() -> None:
    in_api = {"10.9.0.10"}
    ipam = Ipam("10.9.0.10", "10.9.0.12", lambda: in_api)
    assert ipam.allocate("a") == "10.9.0.11"
    assert ipam.allocate("a") == "10.9.0.11"  # the same pod asks again: the same address
    assert ipam.allocate("b") == "10.9.0.12"
    with pytest.raises(IpamExhausted, match="no free pod IP in 10.9.0.10..10.9.0.12"):
        ipam.allocate("c")
    in_api.clear()
    assert ipam.allocate("c") == "10.9.0.10"
    ipam.release("a")
    assert ipam.allocate("d") == "10.9.0.11"


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(ValueError, match="empty pod IP range"):
        Ipam("10.9.0.5", "10.9.0.4", list)
