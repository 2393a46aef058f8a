import pytest

from clm.contracts import subjects
from clm.contracts.streams import COMMANDS, DEAD_LETTERS, EVENTS, stream_for


def test_dotted_names_are_escaped_reversibly() -> None:
    subject = subjects.node_capabilities("ip-10-0-1-2.ec2.internal")
    assert subject == "clm.events.node.ip-10-0-1-2~ec2~internal.capabilities"
    assert subjects.untoken(subject.split(".")[3]) == "ip-10-0-1-2.ec2.internal"


def test_subjects_run_broad_to_narrow() -> None:
    assert (
        subjects.migration_event("games", "mc-0-abc", "MigrationFinished")
        == "clm.events.migration.games.mc-0-abc.MigrationFinished"
    )
    assert subjects.checkpoint_command("n1", "dump") == "clm.cmd.node.n1.checkpoint.dump"
    assert subjects.network_command("n1", "commit") == "clm.cmd.node.n1.network.commit"


@pytest.mark.parametrize("bad", ["", "a b", "a*", "a>", "a~b"])
def test_bad_tokens_are_refused(bad: str) -> None:
    with pytest.raises(subjects.SubjectError):
        subjects.token(bad)


def test_durable_names_have_no_dots() -> None:
    assert subjects.durable("checkpoint-agent", "ip-1.ec2.internal") == "checkpoint-agent-ip-1_ec2_internal"


def test_each_subject_family_has_its_stream() -> None:
    assert stream_for("clm.events.node.n.capabilities") is EVENTS
    assert stream_for("clm.cmd.node.n.checkpoint.dump") is COMMANDS
    assert stream_for("clm.dlq.x") is DEAD_LETTERS
    with pytest.raises(ValueError, match="no CLM stream"):
        stream_for("other.subject")
