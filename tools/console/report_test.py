import io

import orjson

from tools.console.report import emit, percentile


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_emit_table_and_json() -> None:
    rows = [{"mode": "a", "rate_per_s": 1234.5, "n": 10}]
    out = io.StringIO()
    emit("demo", rows, as_json=False, out=out)
    assert "rate_per_s" in out.getvalue() and "1,234" in out.getvalue()
    out = io.StringIO()
    emit("demo", rows, as_json=True, out=out)
    assert orjson.loads(out.getvalue()) == {"benchmark": "demo", **rows[0]}
