from clm.runtime.delivery import H_REASON, ConsumerPolicy, dead_letter_headers


def _policy() -> ConsumerPolicy:
    return ConsumerPolicy(
        durable="d",
        stream="S",
        filter_subject="x.>",
        max_deliver=4,
        backoff_seconds=(1.0, 5.0),
        dead_letter_subject="clm.dlq.d",
    )


def test_backoff_grows_then_stays_at_last_step() -> None:
    policy = _policy()
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [1.0, 5.0, 5.0, 5.0]


def test_dead_letter_headers_are_single_line_and_deduplicated() -> None:
    headers = dead_letter_headers(
        policy=_policy(),
        cause="malformed",
        reason="bad\nthing " + "x" * 2000,
        subject="x.y",
        stream_seq=7,
        deliveries=1,
    )
    assert "\n" not in headers[H_REASON]
    assert len(headers[H_REASON]) <= 1000
    assert headers["Nats-Msg-Id"] == "dlq:S:7"
