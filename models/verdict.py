"""Trial-end verdicts: ``pass``, ``extend`` or ``terminate``, with the evidence behind them.

Pure logic: the caller (``pipelines/analyst/verdicts.py``) reads the registry, the flags
and the activity of a terminal from the store and hands them over as plain
values. Nothing here reads files, the clock or a database.

The rules, in order (the first that applies wins):

1. ``terminate`` when the registry already says ``terminated``; when an analyst
   confirmed a flag of a serious category (``illegal_terminal``, ``data_leakage``);
   or when such a flag is still unresolved (open or snoozed) at ``high`` or
   ``critical`` severity.
2. ``extend`` when the terminal is suspended; when a serious flag is unresolved at
   ``low`` or ``medium`` severity; when a ``non_compliance`` flag is open, snoozed
   or confirmed; when an ``operational`` flag is unresolved at ``high`` or
   ``critical`` severity; or when the terminal was active on too few days to judge.
3. ``pass`` otherwise. Dismissed flags never count against a terminal; they are
   listed in the evidence so that the analyst sees what was set aside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from features.schema import CATEGORIES, FLAG_STATUSES, SEVERITIES

SERIOUS_CATEGORIES: tuple[str, ...] = ("illegal_terminal", "data_leakage")
UNRESOLVED_STATUSES: tuple[str, ...] = ("open", "snoozed")
HIGH_SEVERITIES: tuple[str, ...] = ("high", "critical")


@dataclass(frozen=True)
class FlagFact:
    """What the verdict needs to know about one flag."""

    flag_id: str
    behaviour: str
    category: str
    severity: str
    status: str
    score: float = 0.0
    first_seen: date | None = None
    last_seen: date | None = None
    reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("category", self.category, CATEGORIES),
            ("severity", self.severity, SEVERITIES),
            ("status", self.status, FLAG_STATUSES),
        ):
            if value not in allowed:
                raise ValueError(
                    f"flag {self.flag_id!r} has {name} {value!r}; expected one of "
                    f"{', '.join(allowed)}. Check the flags table against features/schema.py."
                )


@dataclass(frozen=True)
class TerminalFacts:
    """A terminal at trial end: registry state, activity and flags.

    Parameters
    ----------
    terminal_id : str
        DE41.
    trial_end : date
        Last day of the trial window (inclusive).
    registry_status : str
        ``status`` of the latest registry version.
    active_days : int
        Days in the trial window (up to the verdict date) with at least one transaction.
    txn_count, approved_amount_minor, declined_count : int
        Activity in the trial window up to the verdict date.
    flags : tuple of FlagFact
        Every flag of the terminal.
    """

    terminal_id: str
    trial_end: date
    registry_status: str = "active"
    active_days: int = 0
    txn_count: int = 0
    approved_amount_minor: int = 0
    declined_count: int = 0
    flags: tuple[FlagFact, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """A recommendation for one terminal, with its rationale and evidence."""

    terminal_id: str
    verdict: str
    rationale: str
    trial_end: date
    evidence: tuple[str, ...] = ()
    flag_ids: tuple[str, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "terminal_id": self.terminal_id,
            "verdict": self.verdict,
            "trial_end": self.trial_end.isoformat(),
            "rationale": self.rationale,
            "flag_ids": list(self.flag_ids),
            "evidence": list(self.evidence),
            "counts": dict(self.counts),
        }


def _describe(flag: FlagFact) -> str:
    why = "; ".join(flag.reasons) if flag.reasons else "no reason text"
    return (
        f"{flag.flag_id}: {flag.behaviour} ({flag.category}, {flag.severity}, {flag.status}, "
        f"score {flag.score:.2f}) - {why}"
    )


def _ids(flags: Iterable[FlagFact]) -> list[str]:
    return [f.flag_id for f in flags]


def recommend(facts: TerminalFacts, min_active_days: int = 5) -> Verdict:
    """Recommend ``pass``, ``extend`` or ``terminate`` for a terminal at trial end.

    Parameters
    ----------
    facts : TerminalFacts
        Registry state, activity and flags of the terminal.
    min_active_days : int
        Fewest active days needed to pass a terminal; below it the trial is extended
        because there is too little activity to judge.

    Returns
    -------
    Verdict
        The recommendation, a plain-language rationale and the evidence lines.

    Examples
    --------
    >>> from datetime import date
    >>> quiet = TerminalFacts("T0000001", date(2025, 3, 31), active_days=20, txn_count=400)
    >>> recommend(quiet).verdict
    'pass'
    >>> bad = FlagFact("F1", "relocation", "illegal_terminal", "high", "open", 0.9)
    >>> recommend(TerminalFacts("T0000001", date(2025, 3, 31), active_days=20, flags=(bad,))).verdict
    'terminate'
    """
    if min_active_days < 0:
        raise ValueError(
            f"min_active_days is {min_active_days}; expected 0 or more (days with transactions)"
        )
    flags = facts.flags
    serious = [f for f in flags if f.category in SERIOUS_CATEGORIES]
    confirmed_serious = [f for f in serious if f.status == "confirmed"]
    open_serious_high = [
        f for f in serious if f.status in UNRESOLVED_STATUSES and f.severity in HIGH_SEVERITIES
    ]
    open_serious_low = [
        f for f in serious if f.status in UNRESOLVED_STATUSES and f.severity not in HIGH_SEVERITIES
    ]
    non_compliance = [
        f for f in flags if f.category == "non_compliance" and f.status != "dismissed"
    ]
    operational_high = [
        f
        for f in flags
        if f.category == "operational"
        and f.status in UNRESOLVED_STATUSES
        and f.severity in HIGH_SEVERITIES
    ]
    dismissed = [f for f in flags if f.status == "dismissed"]

    counts = {
        "flags": len(flags),
        "open": sum(f.status == "open" for f in flags),
        "snoozed": sum(f.status == "snoozed" for f in flags),
        "confirmed": sum(f.status == "confirmed" for f in flags),
        "dismissed": len(dismissed),
        "active_days": facts.active_days,
        "txn_count": facts.txn_count,
        "approved_amount_minor": facts.approved_amount_minor,
        "declined_count": facts.declined_count,
    }
    activity = (
        f"{facts.active_days} active day(s), {facts.txn_count} transaction(s), "
        f"{facts.declined_count} declined, approved amount {facts.approved_amount_minor} (minor units)"
    )

    reasons: list[str] = []
    cited: list[FlagFact] = []
    if facts.registry_status == "terminated":
        verdict = "terminate"
        reasons.append("the registry already marks the terminal as terminated")
    elif confirmed_serious or open_serious_high:
        verdict = "terminate"
        if confirmed_serious:
            reasons.append(
                f"an analyst confirmed {len(confirmed_serious)} illegal-terminal or data-leakage "
                f"flag(s) ({', '.join(sorted({f.behaviour for f in confirmed_serious}))})"
            )
        if open_serious_high:
            reasons.append(
                f"{len(open_serious_high)} high or critical illegal-terminal or data-leakage "
                f"flag(s) are unresolved ({', '.join(sorted({f.behaviour for f in open_serious_high}))})"
            )
        cited = confirmed_serious + open_serious_high
    else:
        extend_reasons: list[str] = []
        if facts.registry_status == "suspended":
            extend_reasons.append("the terminal is suspended in the registry")
        if open_serious_low:
            extend_reasons.append(
                f"{len(open_serious_low)} low or medium illegal-terminal or data-leakage flag(s) "
                "still need a decision"
            )
        if non_compliance:
            extend_reasons.append(
                f"{len(non_compliance)} trial-policy breach(es) "
                f"({', '.join(sorted({f.behaviour for f in non_compliance}))}) are not resolved"
            )
        if operational_high:
            extend_reasons.append(
                f"{len(operational_high)} serious malfunction flag(s) are unresolved"
            )
        if facts.active_days < min_active_days:
            extend_reasons.append(
                f"only {facts.active_days} active day(s), fewer than the {min_active_days} "
                "needed to judge the terminal"
            )
        if extend_reasons:
            verdict = "extend"
            reasons = extend_reasons
            cited = open_serious_low + non_compliance + operational_high
        else:
            verdict = "pass"
            reasons.append(
                "no unresolved or confirmed illegal-terminal, data-leakage or trial-policy flag "
                f"and enough activity to judge ({facts.active_days} active day(s))"
            )

    rationale = f"{verdict.capitalize()}: " + "; ".join(reasons) + f". Activity: {activity}."
    evidence = [_describe(f) for f in _sorted(cited)]
    others = [f for f in flags if f not in cited]
    evidence += [f"(not decisive) {_describe(f)}" for f in _sorted(others)]
    return Verdict(
        terminal_id=facts.terminal_id,
        verdict=verdict,
        rationale=rationale,
        trial_end=facts.trial_end,
        evidence=tuple(evidence),
        flag_ids=tuple(_ids(_sorted(cited))),
        counts=counts,
    )


def _sorted(flags: Sequence[FlagFact]) -> list[FlagFact]:
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(flags, key=lambda f: (-rank[f.severity], -f.score, f.flag_id))
