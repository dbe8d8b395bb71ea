"""``trialguard backtest``: what a candidate config would change, without touching live flags.

``trialguard backtest --config CANDIDATE.toml --from D1 --to D2`` replays
detection for every night from D1 to D2 twice, on a read-only connection and
with ``persist=False`` (nothing is written: no flags, dispositions, aggregates
or ``runs`` rows):

- the *baseline*: the current config (``models/thresholds.toml``) and the
  stored policies;
- the *candidate*: the same with the candidate's overrides.

It compares the two replays, not the candidate with the live ``flags`` table:
live flags also carry analysts' decisions (a dismissed flag stays dismissed)
and whatever config was in force on each night, so a difference against them
would mix the candidate's effect with history. Both replays start from the same
stored state (flags before D1 continue as they would), and inside the range each
night sees the previous replayed nights in memory, as a real run would.

The candidate TOML holds threshold tables (merged over
``models/thresholds.toml`` key by key) and/or ``[policies.<policy_id>]`` tables,
whose keys replace those keys of the stored policy (other keys are kept; a new
policy_id is added).

Reported: flags that would appear (terminal x behaviour touched by the
candidate only), flags that would disappear (baseline only), with scores, and
the analyst load per night (new flags, baseline vs candidate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from features.schema import POLICY_KEYS
from models.config import merge_config
from pipelines.settings import Settings

POLICIES_TABLE = "policies"
KEY = ["terminal_id", "behaviour"]


@dataclass
class BacktestReport:
    """Differences between the baseline and candidate replays of ``start``..``end``.

    ``appear`` / ``disappear``: one dict per terminal x behaviour with the
    highest score, severity, first and last night touched, and the number of
    nights. ``nights``: per night, new flags and flags touched by each replay.
    """

    start: date
    end: date
    candidate: str
    baseline_config_version: str
    candidate_config_version: str
    policy_overrides: list[str] = field(default_factory=list)
    nights: list[dict[str, Any]] = field(default_factory=list)
    appear: list[dict[str, Any]] = field(default_factory=list)
    disappear: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0

    def to_json(self) -> str:
        """The report as JSON (dates as ISO strings)."""
        return json.dumps(asdict(self), default=str, indent=2, ensure_ascii=False)


def load_candidate(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read a candidate TOML: ``(merged config, policy overrides by policy_id)``.

    Raises ``FileNotFoundError`` / ``ValueError`` with what is wrong and what to do.
    """
    from models.config import default_config

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"candidate config {p} does not exist; pass a TOML file with threshold tables "
            "(as in models/thresholds.toml) and/or [policies.<policy_id>] tables"
        )
    try:
        candidate = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"candidate config {p} is not valid TOML ({exc}); fix the file") from exc
    policies = candidate.pop(POLICIES_TABLE, {}) or {}
    base = default_config()
    unknown = sorted(set(candidate) - set(base))
    if unknown:
        raise ValueError(
            f"candidate config {p} has unknown tables {unknown}; expected [policies.<id>] or "
            f"tables among {sorted(k for k, v in base.items() if isinstance(v, dict))}"
        )
    for pid, body in policies.items():
        if not isinstance(body, dict):
            raise TypeError(
                f"candidate config {p}: policies.{pid} is {type(body).__name__}, expected a "
                f"table such as [policies.{pid}] with keys among {sorted(POLICY_KEYS)}"
            )
        bad = sorted(set(body) - set(POLICY_KEYS))
        if bad:
            raise ValueError(
                f"candidate config {p}: policies.{pid} has unknown keys {bad}; "
                f"policy keys are {sorted(POLICY_KEYS)}"
            )
    return merge_config(base, candidate), policies


def _policy_overrides(con, candidate_policies: dict[str, dict]) -> dict[str, dict] | None:
    """Candidate policy keys merged over the stored policy bodies."""
    if not candidate_policies:
        return None
    from pipelines.detect.store import load_policies

    stored = load_policies(con)
    return {pid: {**stored.get(pid, {}), **body} for pid, body in candidate_policies.items()}


def _touched(results) -> pl.DataFrame:
    """Flags touched over a replay, one row per terminal x behaviour."""
    frames = [
        r.flags.select("terminal_id", "behaviour", "score", "severity").with_columns(
            pl.lit(r.as_of).alias("night")
        )
        for r in results
        if r.flags.height
    ]
    schema = {"terminal_id": pl.String, "behaviour": pl.String, "score": pl.Float64,
              "severity": pl.String, "night": pl.Date}  # fmt: skip
    if not frames:
        return pl.DataFrame(schema=schema)
    return (
        pl.concat(frames)
        .sort("score", descending=True)
        .group_by(KEY, maintain_order=True)
        .agg(
            pl.col("score").first().alias("score"),
            pl.col("severity").first().alias("severity"),
            pl.col("night").min().alias("first_night"),
            pl.col("night").max().alias("last_night"),
            pl.col("night").n_unique().alias("nights"),
        )
        .sort(KEY)
    )


def compare(baseline: list, candidate: list) -> tuple[list[dict], list[dict], int, list[dict]]:
    """``(appear, disappear, unchanged, nights)`` from two lists of ``DetectionResult``."""
    b, c = _touched(baseline), _touched(candidate)
    appear = c.join(b.select(KEY), on=KEY, how="anti").to_dicts()
    disappear = b.join(c.select(KEY), on=KEY, how="anti").to_dicts()
    unchanged = c.join(b.select(KEY), on=KEY, how="semi").height
    nights = []
    for rb, rc in zip(baseline, candidate, strict=True):
        nights.append(
            {
                "night": rb.as_of,
                "baseline_new": int(rb.counts.get("new_flags", 0)),
                "candidate_new": int(rc.counts.get("new_flags", 0)),
                "baseline_touched": int(rb.flags.height),
                "candidate_touched": int(rc.flags.height),
            }
        )
    return appear, disappear, unchanged, nights


def backtest(
    settings: Settings,
    candidate_path: str | Path,
    start: date,
    end: date,
    *,
    on_night=None,
) -> BacktestReport:
    """Replay ``start``..``end`` with the current and the candidate config; compare.

    Parameters
    ----------
    settings : Settings
        Names the database; it is opened read-only and never written.
    candidate_path : str or Path
        Candidate TOML (threshold tables and/or ``[policies.<id>]``).
    start, end : date
        First and last night, inclusive.
    on_night : callable or None
        Called with ``(replay_name, DetectionResult)`` after each replayed night.

    Returns
    -------
    BacktestReport
    """
    from models.config import config_version, load_config
    from pipelines.detect.run import run_range
    from pipelines.runlock import run_lock
    from pipelines.storage import connect

    if end < start:
        raise ValueError(f"--to {end} is before --from {start}; give the earlier date first")
    cand_config, cand_policies = load_candidate(candidate_path)
    base_config = load_config()

    def progress(name):
        return (lambda res: on_night(name, res)) if on_night else None

    # The lock only keeps writers out while we read (DuckDB would refuse them anyway,
    # with a less helpful message); nothing is written.
    with run_lock(settings, "backtest"):
        con = connect(settings.db_path, read_only=True)
        try:
            overrides = _policy_overrides(con, cand_policies)
            base = run_range(settings, start, end, con=con, config=base_config,
                             persist=False, progress=progress("baseline"))  # fmt: skip
            cand = run_range(settings, start, end, con=con, config=cand_config,
                             policies_override=overrides, persist=False,
                             progress=progress("candidate"))  # fmt: skip
        finally:
            con.close()
    appear, disappear, unchanged, nights = compare(base, cand)
    return BacktestReport(
        start=start,
        end=end,
        candidate=str(candidate_path),
        baseline_config_version=config_version(base_config),
        candidate_config_version=config_version(cand_config),
        policy_overrides=sorted(cand_policies),
        nights=nights,
        appear=appear,
        disappear=disappear,
        unchanged=unchanged,
    )


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard backtest``."""
    parser.add_argument(
        "--config", required=True, help="candidate TOML (thresholds, [policies.*])"
    )
    parser.add_argument(
        "--from", dest="date_from", type=date.fromisoformat, required=True, help="first night"
    )
    parser.add_argument(
        "--to",
        dest="date_to",
        type=date.fromisoformat,
        required=True,
        help="last night (inclusive)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def _flag_table(title: str, rows: list[dict]):
    from rich.table import Table

    table = Table(title=f"{title}: {len(rows)}", title_justify="left")
    for col in ("terminal", "behaviour", "score", "severity", "nights", "first", "last"):
        table.add_column(col, justify="right" if col in ("score", "nights") else "left")
    for r in rows:
        table.add_row(
            r["terminal_id"], r["behaviour"], f"{r['score']:.2f}", r["severity"],
            str(r["nights"]), str(r["first_night"]), str(r["last_night"]),
        )  # fmt: skip
    return table


def print_report(report: BacktestReport, console=None) -> None:
    """The report as rich tables: analyst load per night, then appearing/disappearing flags."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    load = Table(title="analyst load per night (new flags)", title_justify="left")
    for col in ("night", "baseline new", "candidate new", "change", "baseline touched",
                "candidate touched"):  # fmt: skip
        load.add_column(col, justify="left" if col == "night" else "right")
    for n in report.nights:
        delta = n["candidate_new"] - n["baseline_new"]
        load.add_row(
            str(n["night"]), str(n["baseline_new"]), str(n["candidate_new"]), f"{delta:+d}",
            str(n["baseline_touched"]), str(n["candidate_touched"]),
        )  # fmt: skip
    console.print(load)
    console.print(_flag_table("flags that would appear", report.appear))
    console.print(_flag_table("flags that would disappear", report.disappear))
    console.print(
        f"{report.unchanged} terminal x behaviour pairs flagged by both; "
        f"baseline config {report.baseline_config_version[:12]}, "
        f"candidate {report.candidate_config_version[:12]} ({report.candidate}"
        + (
            f"; policies changed: {', '.join(report.policy_overrides)}"
            if report.policy_overrides
            else ""
        )
        + "). Nothing was written."
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard backtest --config CANDIDATE.toml --from D1 --to D2 [--json]``."""
    from pipelines.progress import steps
    from pipelines.runlock import RunLockError

    nights = (args.date_to - args.date_from).days + 1
    try:
        with steps("backtest", total=2 * max(nights, 0)) as bar:
            report = backtest(
                settings, args.config, args.date_from, args.date_to,
                on_night=lambda name, res: bar.advance(
                    f"{name} {res.as_of}: {res.counts.get('new_flags', 0)} new flags"
                ),
            )  # fmt: skip
    except (FileNotFoundError, ValueError, TypeError, RunLockError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(report.to_json())
    else:
        print_report(report)
    return 0
