import pytest

from clm.policy.quantity import QuantityError, millicores, to_int, units


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100m", 100),
        ("1", 1000),
        ("0.5", 500),
        ("2", 2000),
        ("1500m", 1500),
        (2, 2000),
        ("1e-3", 1),
        ("250u", 1),
    ],
)
def test_cpu_millicores(value, expected) -> None:
    assert millicores(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("128974848", 128974848),
        ("129e6", 129000000),
        ("129M", 129000000),
        ("123Mi", 128974848),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("1k", 1000),
        ("1Ki", 1024),
        ("110", 110),
    ],
)
def test_memory_and_counts(value, expected) -> None:
    assert units(value) == expected


def test_to_int_by_resource() -> None:
    assert to_int("cpu", "250m") == 250
    assert to_int("memory", "1Ki") == 1024


@pytest.mark.parametrize("bad", ["", "abc", "1Xi", "--1", "1.2.3"])
def test_bad_quantities_say_so(bad: str) -> None:
    with pytest.raises(QuantityError, match="not a Kubernetes quantity"):
        units(bad)
