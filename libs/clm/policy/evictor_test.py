import pytest

from clm.contracts.fields import Fallback
from clm.policy import names
from clm.policy.evictor import Action, Mode, decide, matrix

ME, RD, LMD = names.MIGRATION_ENABLED, names.REMOVAL_DISABLED, names.LIVE_MIGRATION_DISABLED

# Seed 000, "Workload label matrix": one case per row (None = label missing).
ROWS = [
    ("true", "true", None, Action.LIVE_MIGRATE, Fallback.RESTORE_ON_SOURCE),
    ("true", "true", "true", Action.NONE, Fallback.NONE),
    ("true", None, "true", Action.EVICT, Fallback.NONE),
    ("true", None, None, Action.LIVE_MIGRATE, Fallback.EVICT),
    (None, "true", None, Action.NONE, Fallback.NONE),
    (None, None, None, Action.EVICT, Fallback.NONE),
]


def _labels(me, rd, lmd) -> dict[str, str]:
    return {k: v for k, v in ((ME, me), (RD, rd), (LMD, lmd)) if v is not None}


@pytest.mark.parametrize(("me", "rd", "lmd", "action", "fallback"), ROWS)
def test_label_matrix_rows(me, rd, lmd, action, fallback) -> None:
    decision = matrix(_labels(me, rd, lmd))
    assert (decision.action, decision.fallback) == (action, fallback)


@pytest.mark.parametrize("me", ["true", None])
@pytest.mark.parametrize("rd", ["true", None])
def test_rows_5_and_6_ignore_live_migration_disabled(me, rd) -> None:
    if me == "true":
        return
    assert matrix(_labels(me, rd, "true")) == matrix(_labels(me, rd, None))


@pytest.mark.parametrize("value", ["True", "TRUE", "yes", "1", "", "false"])
def test_only_the_exact_value_true_counts(value: str) -> None:
    assert matrix({ME: value}).action is Action.EVICT
    assert matrix({ME: "true", RD: value}).fallback is Fallback.EVICT
    assert matrix({ME: "true", LMD: value}).action is Action.LIVE_MIGRATE


def test_default_mode_migrates_multi_replica_workloads() -> None:
    eligible = {ME: "true"}
    assert decide(eligible, replicas=3, mode=Mode.DEFAULT).action is Action.LIVE_MIGRATE
    assert decide(eligible, replicas=1, mode=Mode.DEFAULT).action is Action.EVICT
    protected = {ME: "true", RD: "true"}
    assert decide(protected, replicas=1, mode=Mode.DEFAULT).action is Action.NONE
    assert decide(protected, replicas=2, mode=Mode.DEFAULT).fallback is Fallback.RESTORE_ON_SOURCE


def test_aggressive_mode_migrates_single_replicas_and_bare_pods() -> None:
    decision = decide({ME: "true"}, replicas=1, mode=Mode.AGGRESSIVE)
    assert (decision.action, decision.fallback) == (Action.LIVE_MIGRATE, Fallback.EVICT)


@pytest.mark.parametrize("mode", list(Mode))
def test_modes_never_override_eviction_or_protection(mode: Mode) -> None:
    for me, rd, lmd, action, _ in ROWS:
        if action is not Action.LIVE_MIGRATE:
            assert decide(_labels(me, rd, lmd), replicas=5, mode=mode).action is action
