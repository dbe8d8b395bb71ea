"""Trial-end verdict rules (pure logic, no store)."""

from __future__ import annotations

from datetime import date

import pytest

from models.verdict import FlagFact, TerminalFacts, recommend

END = date(2025, 3, 31)


def facts(*flags: FlagFact, active_days: int = 20, status: str = "active") -> TerminalFacts:
    return TerminalFacts(
        "T0000001",
        END,
        registry_status=status,
        active_days=active_days,
        txn_count=10 * active_days,
        flags=flags,
    )


def flag(
    fid="F1",
    behaviour="relocation",
    category="illegal_terminal",
    severity="high",
    status="open",
    score=0.8,
) -> FlagFact:
    return FlagFact(fid, behaviour, category, severity, status, score, reasons=("why " + fid,))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), "pass"),
        ((flag(severity="critical"),), "terminate"),
        ((flag(severity="high", status="snoozed"),), "terminate"),
        ((flag(severity="low", status="confirmed"),), "terminate"),
        ((flag(behaviour="pan_exposure", category="data_leakage", severity="high"),), "terminate"),
        ((flag(severity="medium"),), "extend"),
        (
            (
                flag(
                    behaviour="trial_limit_breach", category="non_compliance", severity="critical"
                ),
            ),
            "extend",
        ),
        (
            (flag(behaviour="trial_limit_breach", category="non_compliance", status="confirmed"),),
            "extend",
        ),
        ((flag(behaviour="malfunction", category="operational", severity="critical"),), "extend"),
        ((flag(behaviour="malfunction", category="operational", severity="low"),), "pass"),
        ((flag(severity="critical", status="dismissed"),), "pass"),
        (
            (flag(behaviour="trial_limit_breach", category="non_compliance", status="dismissed"),),
            "pass",
        ),
    ],
)
def test_rules(flags, expected):
    assert recommend(facts(*flags)).verdict == expected


def test_too_little_activity_extends_and_says_so():
    v = recommend(facts(active_days=2), min_active_days=5)
    assert v.verdict == "extend"
    assert "only 2 active day(s)" in v.rationale


def test_registry_status_overrides():
    assert recommend(facts(status="terminated")).verdict == "terminate"
    assert recommend(facts(status="suspended")).verdict == "extend"


def test_terminate_wins_over_extend_and_cites_the_decisive_flags_first():
    serious = flag("F-BAD", severity="critical", score=0.9)
    minor = flag(
        "F-MINOR",
        behaviour="trial_limit_breach",
        category="non_compliance",
        severity="low",
        score=0.2,
    )
    v = recommend(facts(minor, serious, active_days=1))
    assert v.verdict == "terminate"
    assert v.flag_ids == ("F-BAD",)
    assert v.evidence[0].startswith("F-BAD: relocation")
    assert v.evidence[1].startswith("(not decisive) F-MINOR")
    assert v.counts["flags"] == 2 and v.counts["open"] == 2


def test_dismissed_flags_are_listed_but_not_held_against_the_terminal():
    v = recommend(facts(flag("F-D", status="dismissed")))
    assert v.verdict == "pass"
    assert v.flag_ids == ()
    assert any("F-D" in e and "dismissed" in e for e in v.evidence)


def test_bad_codes_are_rejected_with_what_was_expected():
    with pytest.raises(ValueError, match="severity 'urgent'.*low, medium, high, critical"):
        flag(severity="urgent")
    with pytest.raises(ValueError, match="min_active_days"):
        recommend(facts(), min_active_days=-1)
