from clm.policy.details import count, number


def test_numbers_read_as_numbers_and_anything_else_as_the_default() -> None:
    details = {"pages": 12, "seconds": 0.5, "note": "x", "lazy": True}
    assert count(details, "pages") == 12 and number(details, "seconds") == 0.5
    assert number(details, "note", 7.0) == 7.0 and count(details, "lazy") == 0
    assert count(details, "missing", 3) == 3
