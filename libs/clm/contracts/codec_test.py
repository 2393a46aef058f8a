"""Unit tests of encoding, decoding and rejection with reasons."""

import orjson
import pytest

from clm.contracts import (
    REGISTRY,
    ContractError,
    MigrationReason,
    PreDumpFinished,
    RequestMigration,
    decode,
    encode,
)
from clm.contracts.examples import examples


def test_every_kind_has_an_example() -> None:
    assert {m.kind for m in examples()} == set(REGISTRY)


@pytest.mark.parametrize("message", examples(), ids=lambda m: m.kind)
def test_round_trip(message) -> None:
    assert decode(encode(message)) == message


def test_the_eight_documented_reasons() -> None:
    assert [r.value for r in MigrationReason] == [
        "PreDumpSkipped",
        "PreDumpFinished",
        "PreDumpFailed",
        "MigrationReconfigured",
        "PodCreateFinished",
        "PodCreateFailed",
        "MigrationFinished",
        "MigrationFailed",
    ]
    kinds = {m.kind for m in examples()}
    assert {r.value for r in MigrationReason} <= kinds


def test_reason_is_last_subject_token() -> None:
    for message in examples():
        if message.kind in MigrationReason.__members__.values():
            assert message.subject().split(".")[-1] == message.kind


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"a": 1}', "no 'kind' field"),
        (b'{"kind": "Teleport"}', "unknown message kind 'Teleport'"),
        (
            b'{"kind": "RequestMigration", "schema_version": 9, "namespace": "a", "pod": "b"}',
            "newer than this service understands",
        ),
        (
            b'{"kind": "RequestMigration", "namespace": "Not_Valid", "pod": "b"}',
            "invalid RequestMigration: namespace",
        ),
        (
            b'{"kind": "RequestMigration", "namespace": "a", "pod": "b", "colour": "red"}',
            "colour: Extra inputs are not permitted",
        ),
    ],
)
def test_rejections_say_what_is_wrong(payload: bytes, fragment: str) -> None:
    with pytest.raises(ContractError, match=fragment):
        decode(payload)


def test_expected_kind_is_enforced() -> None:
    payload = encode(RequestMigration(namespace="a", pod="b"))
    with pytest.raises(ContractError, match="not accepted here"):
        decode(payload, PreDumpFinished)
    assert decode(payload, [PreDumpFinished, RequestMigration]).kind == "RequestMigration"


def test_encoding_is_plain_json_with_version() -> None:
    obj = orjson.loads(encode(RequestMigration(namespace="a", pod="b")))
    assert obj["kind"] == "RequestMigration"
    assert obj["schema_version"] == 1
    assert obj["message_id"]
