from clm.runtime.membership import member_key, share


def test_every_replica_gets_a_distinct_index_from_the_same_list() -> None:
    members = ["labeler-7c9-b", "labeler-7c9-a", "labeler-7c9-c"]
    shares = sorted(share(members, m) for m in members)
    assert shares == [(0, 3), (1, 3), (2, 3)]


def test_a_replica_not_yet_listed_counts_itself() -> None:
    assert share(["b"], "a") == (0, 2)
    assert share([], "a") == (0, 1)


def test_keys_keep_only_what_nats_allows() -> None:
    assert member_key("clm-labeler-5d4f8b-x2x9z-17") == "clm-labeler-5d4f8b-x2x9z-17"
    assert member_key("host name*>:1") == "host_name___1"
