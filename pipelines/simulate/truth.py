"""Ground truth: injected episodes, and the non-compliance derived exactly from the data.

Derived behaviours are judged per transaction against the registry and the
terminal's policy (the contract's rules), after generation:

``unregistered_use`` (any row, approved or not)
    the terminal id is not in the registry; or, with the terminal's latest
    registry row, ``activated_at`` is empty or later than ``txn_time``, the local
    date is before ``trial_start`` or after ``trial_end``; or the status in effect
    at ``txn_time`` (the latest row with ``updated_at <= txn_time``) is
    ``suspended`` or ``terminated``.
``disallowed_use`` (approved rows, any type)
    card type, transaction type or entry mode not in the policy's allowed lists,
    or the local time of day outside ``business_hours`` (start inclusive, end
    exclusive, a window whose end is not after its start crosses midnight).
``trial_limit_breach`` (approved ``purchase``/``preauth_complete``/``cash_advance``)
    per terminal and local day: a row above ``max_txn_amount_minor``, the sum
    above ``max_daily_amount_minor``, the count above ``max_daily_txn_count``, or
    one card (PAN) more than ``max_same_card_per_day`` times.

A terminal id not in the registry, or whose latest row names a policy that
``policies.toml`` does not define, is judged under ``default``. The day of a
violation is the local date of ``txn_time``. Days of one terminal and behaviour
merge into one episode when consecutive (no gap day); injected episodes keep their
planned window.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from features.schema import CAP_TXN_TYPES, CARD_TYPES, DEFAULT_POLICY_ID, ENTRY_MODES, TXN_TYPES

DAY = 86_400
EPOCH = date(1970, 1, 1)

TRUTH_COLUMNS = ("terminal_id", "behaviour", "start", "end")
TRUTH_DETAIL_COLUMNS = (*TRUTH_COLUMNS, "intensity", "source")
_BIG = 2**62


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def policy_table(policies: dict[str, dict]) -> pl.DataFrame:
    """One row per policy with its caps and allowed lists (absent key = no limit)."""
    rows = []
    for pid, p in policies.items():
        bh = p.get("business_hours")
        rows.append(
            {
                "policy": pid,
                "cap_txn": int(p.get("max_txn_amount_minor", _BIG)),
                "cap_amount": int(p.get("max_daily_amount_minor", _BIG)),
                "cap_count": int(p.get("max_daily_txn_count", _BIG)),
                "cap_card": int(p.get("max_same_card_per_day", _BIG)),
                "ok_card": p.get("allowed_card_types"),
                "ok_type": p.get("allowed_txn_types"),
                "ok_entry": p.get("allowed_entry_modes"),
                "bh_start": None if bh is None else _minutes(bh[0]),
                "bh_end": None if bh is None else _minutes(bh[1]),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "policy": pl.String,
            "cap_txn": pl.Int64,
            "cap_amount": pl.Int64,
            "cap_count": pl.Int64,
            "cap_card": pl.Int64,
            "ok_card": pl.List(pl.String),
            "ok_type": pl.List(pl.String),
            "ok_entry": pl.List(pl.String),
            "bh_start": pl.Int64,
            "bh_end": pl.Int64,
        },
    )


class Judge:
    """Applies the derived-truth rules to each day's rows (numpy, no per-row Python).

    The registry facts come from the registry *frame* (latest row per terminal,
    status rows), not from the generator's plan, so the truth is what the data says.
    Rows are given as the generator's integer arrays (see ``DayOutput.rows``).
    """

    def __init__(
        self, registry: pl.DataFrame, policies: dict[str, dict], terminal_ids: np.ndarray
    ):
        self.tids = np.asarray(terminal_ids, dtype=object)
        index = {t: i for i, t in enumerate(self.tids)}
        n = len(self.tids)
        self.names = list(policies)
        default = self.names.index(DEFAULT_POLICY_ID)
        self.registered = np.zeros(n, dtype=bool)
        self.activated = np.full(n, -1, dtype=np.int64)
        self.ts = np.zeros(n, dtype=np.int64)
        self.te = np.zeros(n, dtype=np.int64)
        self.stop = np.full(n, _BIG, dtype=np.int64)
        self.pol = np.full(n, default, dtype=np.int64)
        reg = registry.sort("terminal_id", "updated_at")
        stopped = pl.col("status").is_in(["suspended", "terminated"])
        per = reg.group_by("terminal_id", maintain_order=True).agg(
            pl.col("activated_at", "trial_start", "trial_end", "policy_id").last(),
            stop=pl.col("updated_at").filter(stopped).min(),
            # a stop followed by an active/pending row would need interval logic
            reopened=(stopped.cast(pl.Int8).diff() < 0).any(),
        )
        if per["reopened"].any():
            raise AssertionError(
                "a terminal is re-activated after a stop; the judge does not model it"
            )
        idx = np.array([index[t] for t in per["terminal_id"]], dtype=np.int64)
        self.registered[idx] = True
        act = per["activated_at"]
        self.activated[idx] = np.where(
            act.is_null().to_numpy(), -1, act.dt.epoch("s").fill_null(0).to_numpy()
        )
        self.ts[idx] = per["trial_start"].cast(pl.Int64).to_numpy()
        self.te[idx] = per["trial_end"].cast(pl.Int64).to_numpy()
        stop = per["stop"]
        self.stop[idx] = np.where(
            stop.is_null().to_numpy(), _BIG, stop.dt.epoch("s").fill_null(0).to_numpy()
        )
        pid = per["policy_id"].to_list()
        self.pol[idx] = [self.names.index(p) if p in policies else default for p in pid]
        tab = policy_table(policies)
        self.cap_txn = tab["cap_txn"].to_numpy()
        self.cap_amount = tab["cap_amount"].to_numpy()
        self.cap_count = tab["cap_count"].to_numpy()
        self.cap_card = tab["cap_card"].to_numpy()
        self.bh_start = tab["bh_start"].fill_null(-1).to_numpy()
        self.bh_end = tab["bh_end"].fill_null(-1).to_numpy()
        self.ok_card = _allowed(tab["ok_card"], CARD_TYPES)
        self.ok_type = _allowed(tab["ok_type"], TXN_TYPES)
        self.ok_entry = _allowed(tab["ok_entry"], tuple(ENTRY_MODES))
        self.cap_types = np.array([TXN_TYPES.index(t) for t in CAP_TXN_TYPES])
        self._found: list[np.ndarray] = []
        self._off_day: list[dict[str, np.ndarray]] = []

    def day(self, rows: dict[str, np.ndarray], day: date) -> None:
        """Judge one day file's rows (``term, t, ttype, entry, card_type, approved, amount, pan``).

        Rows whose local date is not ``day`` (clock skew) are judged for the daily
        caps together at :meth:`finish`.
        """
        term, t = rows["term"], rows["t"]
        dayrow = t // DAY
        pol = self.pol[term]
        unreg = (
            ~self.registered[term]
            | (self.activated[term] < 0)
            | (t < self.activated[term])
            | (dayrow < self.ts[term])
            | (dayrow > self.te[term])
            | (t >= self.stop[term])
        )
        ok = rows["approved"]
        minute = (t % DAY) // 60
        s, e = self.bh_start[pol], self.bh_end[pol]
        in_hours = np.where(
            (s < 0) | (s == e),
            True,
            np.where(s < e, (minute >= s) & (minute < e), (minute >= s) | (minute < e)),
        )
        disal = ok & (
            ~self.ok_card[pol, rows["card_type"]]
            | ~self.ok_type[pol, rows["ttype"]]
            | ~self.ok_entry[pol, rows["entry"]]
            | ~in_hours
        )
        self._add(term[unreg], dayrow[unreg], 0)
        self._add(term[disal], dayrow[disal], 1)
        capped = ok & np.isin(rows["ttype"], self.cap_types)
        today = dayrow == (day - EPOCH).days
        self._breaches(
            term[capped & today],
            dayrow[capped & today],
            rows["amount"][capped & today],
            rows["pan"][capped & today],
        )
        off = capped & ~today
        if off.any():
            self._off_day.append(
                {
                    "term": term[off],
                    "day": dayrow[off],
                    "amount": rows["amount"][off],
                    "pan": rows["pan"][off],
                }
            )

    def _add(self, term: np.ndarray, day: np.ndarray, code: int) -> None:
        if len(term):
            self._found.append(np.unique((term.astype(np.int64) * 2**20 + day) * 4 + code))

    def _breaches(self, term, day, amount, pan) -> None:
        if not len(term):
            return
        pol = self.pol[term]
        self._add(term[amount > self.cap_txn[pol]], day[amount > self.cap_txn[pol]], 2)
        key = term.astype(np.int64) * 2**20 + day
        df = pl.DataFrame({"k": key, "p": pan, "a": amount})
        per_day = df.group_by("k").agg(total=pl.col("a").sum(), n=pl.len())
        k = per_day["k"].to_numpy()
        kp = self.pol[k // 2**20]
        over = (per_day["total"].to_numpy() > self.cap_amount[kp]) | (
            per_day["n"].to_numpy() > self.cap_count[kp]
        )
        per_card = df.group_by("k", "p").agg(n=pl.len()).group_by("k").agg(pl.col("n").max())
        ck = per_card["k"].to_numpy()
        card_over = per_card["n"].to_numpy() > self.cap_card[self.pol[ck // 2**20]]
        hit = np.concatenate([k[over], ck[card_over]])
        self._add(hit // 2**20, hit % 2**20, 2)

    def finish(self) -> pl.DataFrame:
        """All violations so far as ``(terminal_id, day, behaviour)`` rows."""
        if self._off_day:
            off = {k: np.concatenate([b[k] for b in self._off_day]) for k in self._off_day[0]}
            self._breaches(off["term"], off["day"], off["amount"], off["pan"])
            self._off_day = []
        keys = (
            np.unique(np.concatenate(self._found)) if self._found else np.zeros(0, dtype=np.int64)
        )
        code = keys % 4
        td = keys // 4
        return pl.DataFrame(
            {
                "terminal_id": pl.Series(self.tids[td // 2**20].tolist(), dtype=pl.String),
                "day": pl.Series((td % 2**20).astype("datetime64[D]")).cast(pl.Date),
                "behaviour": pl.Series(
                    np.array(_CODES, dtype=object)[code].tolist(), dtype=pl.String
                ),
            }
        )


_CODES = ("unregistered_use", "disallowed_use", "trial_limit_breach")


def _allowed(lists: pl.Series, codes: tuple[str, ...]) -> np.ndarray:
    out = np.ones((len(lists), len(codes)), dtype=bool)
    for i, allowed in enumerate(lists.to_list()):
        if allowed is not None:
            out[i] = [c in allowed for c in codes]
    return out


def episodes(days: pl.DataFrame) -> pl.DataFrame:
    """Merge (terminal_id, behaviour, day) rows into episodes of consecutive days."""
    if days.is_empty():
        return pl.DataFrame(
            schema={
                "terminal_id": pl.String,
                "behaviour": pl.String,
                "start": pl.Date,
                "end": pl.Date,
            }
        )
    return (
        days.unique()
        .sort("terminal_id", "behaviour", "day")
        .with_columns(
            new=(
                (pl.col("day").diff().dt.total_days() != 1).fill_null(True)
                | (pl.col("terminal_id") != pl.col("terminal_id").shift()).fill_null(True)
                | (pl.col("behaviour") != pl.col("behaviour").shift()).fill_null(True)
            )
        )
        .with_columns(ep=pl.col("new").cum_sum())
        .group_by("terminal_id", "behaviour", "ep", maintain_order=True)
        .agg(start=pl.col("day").min(), end=pl.col("day").max())
        .drop("ep")
    )
