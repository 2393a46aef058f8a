from pathlib import Path

import yaml

from clm.contracts import MigrationReason
from tools.asyncapi.generate import DOC, render


def test_checked_in_asyncapi_document_is_up_to_date() -> None:
    assert (
        Path(DOC).read_text() == render()
    ), f"{DOC} is out of date: run ./pants run tools/asyncapi:generate and commit the result"


def test_document_covers_every_service_and_the_eight_reasons() -> None:
    doc = yaml.safe_load(render())
    addresses = {c["address"] for c in doc["channels"].values()}
    assert "clm.events.node.*.capabilities" in addresses
    assert any(a.startswith("clm.events.step.") for a in addresses)  # the agents' step results
    assert any(a.startswith("clm.cmd.node.{node}.checkpoint") for a in addresses)
    assert any(a.startswith("clm.cmd.node.{node}.network") for a in addresses)
    assert "clm.events.migration.>" in addresses
    schemas = set(doc["components"]["schemas"])
    assert {r.value for r in MigrationReason} <= schemas
