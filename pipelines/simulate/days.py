"""One local day of the trial: transactions, terminal events and fraud reports, vectorised.

A day is built from *blocks* of rows (dicts of equal-length numpy arrays): the
legitimate traffic, its follow-ups (reversals, voids, refunds, completions), the
background noise and each active injected episode. Blocks are concatenated,
sorted by time, numbered, and only then turned into strings, so an injected row
is numbered and formatted exactly like a legitimate one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import polars as pl

from features.schema import CARD_TYPES, ENTRY_MODES, FRAUD_TYPES, TRANSACTIONS, TXN_TYPES
from pipelines.simulate import fmt
from pipelines.simulate import scenarios as sc
from pipelines.simulate.cards import (
    BIN_COUNTRY,
    BIN_TYPE,
    sequential_cards,
)
from pipelines.simulate.reference import BINS, CATEGORIES, WEEKDAY
from pipelines.simulate.world import DAY, World, offset_km

ENTRY = tuple(ENTRY_MODES)  # index -> code
E = {c: i for i, c in enumerate(ENTRY)}
T = {c: i for i, c in enumerate(TXN_TYPES)}
RESP = ("00", "51", "55", "05", "54", "61", "14", "91", "96", "57")
R = {c: i for i, c in enumerate(RESP)}
BIN_PREFIX_STR = tuple(b.prefix for b in BINS)
TXN_COLUMNS = tuple(c for c in TRANSACTIONS.names if c != "card_token")
BIN_TYPE_IDX = np.array([CARD_TYPES.index(t) for t in BIN_TYPE], dtype=np.int8)

FIELDS: dict[str, tuple[type, object]] = {
    "term": (np.int64, 0),
    "dev": (np.int8, 0),
    "t": (np.int64, 0),
    "ttype": (np.int8, T["purchase"]),
    "amount": (np.int64, 0),
    "pan": (np.uint64, 0),
    "bin": (np.int16, 0),
    "chip": (np.bool_, True),
    "entry": (np.int8, E["05"]),
    "pin": (np.bool_, False),
    "mcc": (np.int16, -1),  # -1 = the registered MCC
    "resp": (np.int8, 0),
    "orig_row": (np.int64, -1),
    "orig_num": (np.int64, -1),
    "rep_delay": (np.int64, -1),  # seconds from fraud to report; -1 = not reported
    "rep_type": (np.int8, 0),
    "rep_txn": (np.bool_, False),
    "skew": (np.bool_, False),
    "dup_stan": (np.bool_, False),
}


def block(n: int, **cols) -> dict[str, np.ndarray]:
    """A block of ``n`` rows; columns not given take their defaults."""
    out = {}
    for name, (dtype, default) in FIELDS.items():
        v = cols.get(name)
        out[name] = np.full(n, default, dtype=dtype) if v is None else np.asarray(v).astype(dtype)
        if out[name].shape != (n,):
            out[name] = np.broadcast_to(out[name], (n,)).copy()
    return out


def concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of all blocks, in order."""
    blocks = [b for b in blocks if len(b["t"])]
    if not blocks:
        return block(0)
    return {k: np.concatenate([b[k] for b in blocks]) for k in FIELDS}


def take(b: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    """Rows ``idx`` of a block."""
    return {k: v[idx] for k, v in b.items()}


def _pick(rng, rows: np.ndarray, share: float) -> np.ndarray:
    """A random share of ``rows``, at least one when there are any (an episode day shows)."""
    hit = rows[rng.random(len(rows)) < share]
    if len(hit) == 0 and len(rows):
        hit = rows[rng.integers(0, len(rows), size=1)]
    return hit


def _choice(rng, weights: dict[str, float], n: int, index: dict[str, int]) -> np.ndarray:
    codes = list(weights)
    p = np.array(list(weights.values()), dtype=np.float64)
    return np.array([index[c] for c in codes], dtype=np.int8)[
        rng.choice(len(codes), size=n, p=p / p.sum())
    ]


class ByTerm:
    """Row indices per terminal, found by binary search instead of a full scan."""

    def __init__(self, term: np.ndarray):
        self.order = np.argsort(term, kind="stable")
        self.sorted = term[self.order]

    def rows(self, t: int) -> np.ndarray:
        """Indices of the rows of terminal ``t`` (in their original order)."""
        lo, hi = np.searchsorted(self.sorted, [t, t + 1])
        return self.order[lo:hi]


@dataclass
class DayState:
    """What carries from one day to the next (bounded, independent of trial length)."""

    stan: np.ndarray
    stan_clone: np.ndarray
    pending: dict[str, np.ndarray] = field(default_factory=lambda: block(0))
    report_seq: int = 0


def new_state(world: World, rng: np.random.Generator) -> DayState:
    """Initial STAN counters."""
    n = world.n_terms
    return DayState(rng.integers(0, 900_000, size=n), rng.integers(0, 900_000, size=n))


@dataclass
class DayOutput:
    """One day's frames (contract columns, polars types) and the carried state."""

    transactions: pl.DataFrame
    events: pl.DataFrame | None  # made by :meth:`DayGenerator.events`
    reports: pl.DataFrame
    #: the transactions as integer arrays (term, t, ttype, entry, card_type, approved,
    #: amount, pan), in the same order, for the derived-truth judge
    rows: dict[str, np.ndarray]


def policy_value(world: World, key: str, default: float) -> np.ndarray:
    """A policy key per terminal (``default`` where the policy has no such key)."""
    out = np.empty(world.n_terms, dtype=np.float64)
    for pid, pol in world.policies.items():
        out[world.term["policy"] == pid] = float(pol.get(key, default))  # type: ignore[arg-type]
    return out


def allowed_matrix(world: World, key: str, codes: tuple[str, ...]) -> np.ndarray:
    """Boolean (terminal x code) of what each terminal's policy allows."""
    out = np.ones((world.n_terms, len(codes)), dtype=bool)
    for pid, pol in world.policies.items():
        allowed = pol.get(key)
        if allowed is not None:
            out[world.term["policy"] == pid] = np.isin(codes, allowed)  # type: ignore[arg-type]
    return out


class DayGenerator:
    """Generates the trial day by day; holds only per-terminal arrays between days."""

    def __init__(self, world: World, seed: int):
        self.w = world
        self.seed = seed
        self.state = new_state(world, np.random.default_rng(np.random.SeedSequence([seed, 1])))
        tm = world.term
        self.cap_txn = policy_value(world, "max_txn_amount_minor", np.inf)
        self.ok_entry = allowed_matrix(world, "allowed_entry_modes", ENTRY)
        self.ok_card = allowed_matrix(world, "allowed_card_types", CARD_TYPES)
        self.ok_ttype = allowed_matrix(world, "allowed_txn_types", TXN_TYPES)
        self.mcc_int = np.array([int(m) for m in tm["mcc"]], dtype=np.int16)
        self.cat_round = np.array([CATEGORIES[c].round_share for c in tm["cat"]])
        self.is_hotel = np.isin(tm["mcc"], ["7011", "7512"])
        self.batch = np.ones(world.n_terms, dtype=np.int64)
        self.hour_w = np.diff(tm["hour_cdf"], axis=1, prepend=0.0)
        # row i's CDF shifted by i, flattened: one searchsorted samples every row's hour
        self.flat_cdf = (tm["hour_cdf"] + np.arange(world.n_terms)[:, None]).ravel()
        self.log_median = np.log(tm["median_fen"])
        self.km_lon = 1.0 / (111.0 * np.cos(np.radians(tm["lat"])))
        self.strings = {
            "tid": fmt.table(tm["tid"]),
            "mid": fmt.table(tm["mid"]),
            "serial": fmt.table([*tm["serial"], *tm["clone_serial"], None]),
            "ttype": fmt.table(TXN_TYPES),
            "currency": fmt.table(["156"]),
            "bin": fmt.table(BIN_PREFIX_STR),
            "card_type": fmt.table(BIN_TYPE),
            "country": fmt.table(BIN_COUNTRY),
            "entry": fmt.table(ENTRY),
            "resp": fmt.table(RESP),
        }

    # -- legitimate traffic ---------------------------------------------------------
    def _customers(self, rng, term: np.ndarray) -> np.ndarray:
        """Card indices for rows at ``term``: regulars of the terminal, some visitors."""
        tm = self.w.term
        u = rng.random(len(term))
        idx = tm["win_start"][term] + (tm["win_width"][term] * u**sc.REGULAR_SKEW).astype(np.int64)
        visitor = rng.random(len(term)) < sc.VISITOR_SHARE
        idx[visitor] = rng.integers(0, len(self.w.card_pan), size=int(visitor.sum()))
        return idx

    def _amounts(self, rng, term: np.ndarray) -> np.ndarray:
        tm = self.w.term
        amt = np.exp(self.log_median[term] + tm["sigma"][term] * rng.standard_normal(len(term)))
        amt = np.maximum(amt, 100).astype(np.int64)
        whole = rng.random(len(term)) < 0.35
        amt[whole] = np.maximum(amt[whole] // 100 * 100, 100)
        rnd = rng.random(len(term)) < self.cat_round[term]
        amt[rnd] = np.maximum(np.round(amt[rnd] / 5000) * 5000, 5000).astype(np.int64)
        hundred = rng.random(len(term)) < sc.ROUND_AMOUNT_RATE
        amt[hundred] = np.maximum(np.round(amt[hundred] / 10000) * 10000, 10000).astype(np.int64)
        cap = self.cap_txn[term]
        over = (amt > cap) & ~tm["sloppy"][term]
        amt[over] = (
            (cap[over] * rng.uniform(0.15, 0.85, size=int(over.sum()))).astype(np.int64)
            // 100
            * 100
        )
        return amt

    def _entry(self, rng, term, chip, sloppy_ok) -> np.ndarray:
        n = len(term)
        entry = np.where(
            chip, _choice(rng, sc.CHIP_ENTRY, n, E), _choice(rng, sc.MAG_ENTRY, n, E)
        ).astype(np.int8)
        bad = ~self.ok_entry[term, entry] & ~sloppy_ok
        entry[bad & chip] = E["05"]
        entry[bad & ~chip] = E["03"]
        fb = chip & (rng.random(n) < sc.LEGIT_FALLBACK_RATE)
        entry[fb] = E["80"]
        return entry

    def _pin(self, rng, entry, bin_idx, amount) -> np.ndarray:
        debit = BIN_TYPE_IDX[bin_idx] == 0
        contact = np.isin(entry, [E["05"], E["02"], E["90"], E["80"]])
        small_cl = np.isin(entry, [E["07"], E["91"]]) & (amount <= 100_000)
        p = np.where(contact, np.where(debit, 0.95, 0.4), np.where(small_cl, 0.02, 0.5))
        p = np.where(entry == E["03"], 0.0, p)
        return rng.random(len(entry)) < p

    def _legit(self, rng, d: int) -> dict[str, np.ndarray]:
        w, tm = self.w, self.w.term
        day0 = w.day_start(d)
        dow = (w.start + timedelta(days=d)).weekday()
        f = WEEKDAY[dow] * np.where(dow >= 5, tm["weekend"], 1.0)
        lam = tm["rate"] * f * np.exp(rng.normal(0, 0.25, size=w.n_terms))
        live = (tm["op_start"] < day0 + DAY) & (tm["op_end"] > day0)
        lam = np.where(live, lam, 0.0) / (1 - sc.DECLINE_RATE)
        counts = rng.poisson(lam)
        term = np.repeat(np.arange(w.n_terms), counts)
        n = len(term)
        u = rng.random(n)
        hour = self._hours(term, u)
        t = day0 + hour * 3600 + rng.integers(0, 3600, size=n)
        keep = (t >= tm["op_start"][term]) & (t < tm["op_end"][term])
        term, t = term[keep], t[keep]
        n = len(term)
        sloppy = tm["sloppy"][term]
        card = self._customers(rng, term)
        # a customer whose card type the policy forbids pays with a debit card instead
        bad = ~self.ok_card[term, BIN_TYPE_IDX[w.card_bin[card]]] & ~(
            sloppy & (rng.random(n) < 0.3)
        )
        card[bad] = w.card_debit_next[card[bad]]
        pan, bin_idx, chip = w.card_pan[card], w.card_bin[card], w.card_chip[card]
        amount = self._amounts(rng, term)
        entry = self._entry(rng, term, chip, sloppy & (rng.random(n) < 0.5))
        ttype = np.full(n, T["purchase"], dtype=np.int8)
        bal = rng.random(n) < sc.BALANCE_INQUIRY_RATE
        bal &= self.ok_ttype[term, T["balance_inquiry"]] | sloppy
        ttype[bal] = T["balance_inquiry"]
        amount[bal] = 0
        pre = self.is_hotel[term] & (rng.random(n) < sc.PREAUTH_SHARE_HOTEL)
        ttype[pre] = T["preauth"]
        resp = np.zeros(n, dtype=np.int8)
        dec = rng.random(n) < sc.DECLINE_RATE
        resp[dec] = _choice(rng, sc.DECLINE_CODES, int(dec.sum()), R)
        pin = self._pin(rng, entry, bin_idx, amount)
        return block(
            n,
            term=term,
            t=t,
            ttype=ttype,
            amount=amount,
            pan=pan,
            bin=bin_idx,
            chip=chip,
            entry=entry,
            pin=pin,
            resp=resp,
        )

    def _followups(
        self, rng, base: dict[str, np.ndarray], d: int, extra_reversal: np.ndarray
    ) -> list:
        """Reversals, voids, refunds and preauth completions referring to ``base`` rows."""
        w = self.w
        day_end = w.day_start(d) + DAY
        ok = base["resp"] == 0
        purchase = ok & (base["ttype"] == T["purchase"])
        n = len(ok)
        out = []
        r = rng.random(n)
        rev = purchase & (r < sc.REVERSAL_RATE + extra_reversal)
        void = purchase & ~rev & (r < sc.REVERSAL_RATE + sc.VOID_RATE + extra_reversal)
        refund = purchase & ~rev & ~void & (rng.random(n) < sc.REFUND_RATE)
        complete = ok & (base["ttype"] == T["preauth"])
        for mask, kind, lo, hi in (
            (rev, "reversal", 20, 120),
            (void, "void", 60, 7200),
            (refund, "refund", 0, 7),
            (complete, "preauth_complete", 0, 3),
        ):
            idx = np.flatnonzero(mask)
            b = take(base, idx)
            b["ttype"][:] = T[kind]
            b["orig_row"] = idx.astype(np.int64)
            b["rep_delay"][:] = -1
            if kind in ("refund", "preauth_complete"):
                # back at the counter on a later visit, during opening hours
                later = (
                    self._times_open_many(rng, b["term"], d)
                    + rng.integers(lo, hi, size=len(idx)) * DAY
                )
                b["t"] = np.where(later > b["t"] + 600, later, later + DAY)
            else:
                b["t"] = b["t"] + rng.integers(lo, hi, size=len(idx))
            if kind == "refund":
                part = rng.random(len(idx)) < 0.3
                b["amount"][part] = (
                    b["amount"][part] * rng.uniform(0.2, 0.9, size=int(part.sum()))
                ).astype(np.int64)
                b["entry"] = np.where(b["chip"], E["07"], E["03"]).astype(np.int8)
            if kind == "preauth_complete":
                b["amount"] = (b["amount"] * rng.uniform(0.6, 1.0, size=len(idx))).astype(np.int64)
            if kind in ("void", "reversal"):
                # same session: within opening hours and before midnight
                b = take(b, self._open(b["term"], b["t"]) & (b["t"] < day_end))
            out.append(b)
        return out

    # -- the day --------------------------------------------------------------------
    def day(self, d: int) -> DayOutput:
        """Generate trial day ``d`` (0-based)."""
        w, tm = self.w, self.w.term
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2, d]))
        self._current_day = d
        day0 = w.day_start(d)
        day_end = day0 + DAY
        episodes = w.episodes_on(d)
        base = self._legit(rng, d)
        by_term = self._by_term = ByTerm(base["term"])
        by_beh: dict[str, list] = {}
        for e in episodes:
            by_beh.setdefault(e.behaviour, []).append(e)

        # per-row edits of legitimate rows by injected behaviours
        extra_rev = np.zeros(len(base["t"]))
        for e in by_beh.get("malfunction", []):
            rows = by_term.rows(e.term)
            p = e.params
            tech = _pick(rng, rows, p["tech"])
            base["resp"][tech] = np.where(rng.random(len(tech)) < 0.5, R["91"], R["96"])
            extra_rev[rows] = p["reversal"]
            base["skew"][rows] = rng.random(len(rows)) < p["skew"]
            base["dup_stan"][rows] = rng.random(len(rows)) < p["dup_stan"]
        for e in by_beh.get("fallback_abuse", []):
            rows = by_term.rows(e.term)
            rows = rows[base["chip"][rows]]
            hit = _pick(rng, rows, e.params["share"])
            manual = rng.random(len(hit)) < e.params["manual"]
            mag = np.array([E["80"], E["90"], E["02"]], dtype=np.int8)[
                rng.integers(0, 3, size=len(hit))
            ]
            base["entry"][hit] = np.where(manual, E["01"], mag)
            base["resp"][hit] = 0
        for e in by_beh.get("mcc_mismatch", []):
            rows = by_term.rows(e.term)
            base["mcc"][_pick(rng, rows, e.params["share"])] = int(e.extra["mcc"])

        blocks = [base, *self._followups(rng, base, d, extra_rev)]
        # rows carried from earlier days (refunds, completions, misuse of skimmed cards)
        pend = self.state.pending
        now = pend["t"] < day_end
        carried = take(pend, now)
        self.state.pending = take(pend, ~now)
        misuse = np.flatnonzero(carried["rep_delay"] >= 0)
        swipe_ok = np.flatnonzero(self.ok_entry[base["term"], E["90"]])
        if len(misuse) and len(swipe_ok):
            # a counterfeit card is swiped where swipes are accepted
            host = swipe_ok[rng.integers(0, len(swipe_ok), size=len(misuse))]
            carried["term"][misuse] = base["term"][host]
            carried["t"][misuse] = base["t"][host] + rng.integers(1, 600, size=len(misuse))
            carried = take(
                carried, self._open(carried["term"], carried["t"]) & (carried["t"] < day_end)
            )
        alive = (carried["t"] >= tm["op_start"][carried["term"]]) & (
            carried["t"] < tm["op_end"][carried["term"]]
        )
        blocks.append(take(carried, alive))

        blocks.append(self._decline_bursts(rng, d))
        report_frames: list[dict[str, np.ndarray]] = [_empty_reports()]
        for e in by_beh.get("cloned_terminal", []):
            blocks.append(self._clone_rows(rng, e, base))
        for e in by_beh.get("cash_out", []):
            blocks.append(self._cash_out_rows(rng, e, d))
        for e in by_beh.get("card_testing", []):
            blocks.append(self._card_testing_rows(rng, e, d))
        for e in by_beh.get("fraud_hotspot", []):
            blocks.append(self._hotspot_rows(rng, e, base))
        for e in by_beh.get("card_compromise", []):
            report_frames.append(self._skim(rng, e, base, d))
        report_frames.append(self._background_fraud(rng, d))

        rows = concat(blocks)
        # follow-ups that fall after midnight wait for their day
        later = rows["t"] >= day_end
        if later.any():
            lat = take(rows, later)
            rows_keep = ~later
        else:
            lat, rows_keep = None, np.ones(len(rows["t"]), dtype=bool)
        # order, number and STAN
        order = np.lexsort((rows["term"], rows["t"]))
        order = order[rows_keep[order]]
        rank = np.full(len(rows["t"]), -1, dtype=np.int64)
        rank[order] = np.arange(len(order))
        ymd = int((w.start + timedelta(days=d)).strftime("%Y%m%d"))
        num = ymd * 1_000_000_000 + rank
        # within-day originals: row index -> number (only rows of the base block are referenced)
        orig_num = rows["orig_num"].copy()
        ref = rows["orig_row"] >= 0
        orig_num[ref] = num[rows["orig_row"][ref]]
        if lat is not None:
            lat["orig_num"] = orig_num[later]
            lat["orig_row"][:] = -1
            self.state.pending = concat([self.state.pending, lat])
        rows = take(rows, order)
        rows["orig_num"] = orig_num[order]
        num = num[order]
        stan = self._stans(rows)
        # clock skew: the host logs an implausible time (RTC reset, or a year ahead)
        sk = np.flatnonzero(rows["skew"])
        if len(sk):
            reset = rng.random(len(sk)) < 0.5
            tod = rows["t"][sk] % DAY
            rows["t"][sk] = np.where(reset, (10957 * DAY) + tod, rows["t"][sk] + 366 * DAY)
        lat_, lon_, place, ci, places = self._locations(rng, rows, d, episodes)
        report_frames.append(self._row_reports(rows, num))
        tx = self._frame(rows, num, stan, lat_, lon_, place, ci, places)
        rep = _report_frame(report_frames)
        judge_rows = {
            "term": rows["term"],
            "t": rows["t"],
            "ttype": rows["ttype"],
            "entry": rows["entry"],
            "card_type": BIN_TYPE_IDX[rows["bin"]],
            "approved": rows["resp"] == 0,
            "amount": rows["amount"],
            "pan": rows["pan"],
        }
        return DayOutput(tx, None, rep, judge_rows)

    def _stans(self, rows) -> np.ndarray:
        """STAN per row: one counter per physical device, incremented per message."""
        n = len(rows["t"])
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        key = rows["term"] * 2 + rows["dev"]
        o = np.lexsort((rows["t"], key))
        k = key[o]
        start = np.r_[True, k[1:] != k[:-1]]
        grp_start = np.maximum.accumulate(np.where(start, np.arange(n), 0))
        pos = np.arange(n) - grp_start
        counters = np.where(
            rows["dev"][o] == 1,
            self.state.stan_clone[rows["term"][o]],
            self.state.stan[rows["term"][o]],
        )
        s = (counters + pos + 1) % 1_000_000
        dup = rows["dup_stan"][o] & ~start
        s[dup] = s[np.flatnonzero(dup) - 1]
        last = np.r_[k[1:] != k[:-1], True]
        ends = np.flatnonzero(last)
        t_end, d_end = rows["term"][o][ends], rows["dev"][o][ends]
        self.state.stan[t_end[d_end == 0]] = s[ends][d_end == 0]
        self.state.stan_clone[t_end[d_end == 1]] = s[ends][d_end == 1]
        out = np.empty(n, dtype=np.int64)
        out[o] = s
        return out

    # -- background noise -------------------------------------------------------------
    def _decline_bursts(self, rng, d):
        """A network hiccup: a few technical declines within minutes at a clean terminal."""
        w, tm = self.w, self.w.term
        day0 = w.day_start(d)
        live = np.flatnonzero(
            (tm["op_start"] < day0 + 12 * 3600) & (tm["op_end"] > day0 + 20 * 3600) & ~tm["ghost"]
        )
        hit = live[rng.random(len(live)) < sc.DECLINE_BURST_DAILY_PROB]
        k = rng.integers(3, 7, size=len(hit))
        term = np.repeat(hit, k)
        t0 = np.repeat(day0 + rng.integers(12 * 3600, 20 * 3600, size=len(hit)), k)
        t = t0 + rng.integers(0, 300, size=len(term))
        card = self._customers(rng, term)
        chip = w.card_chip[card]
        return block(
            len(term),
            term=term,
            t=t,
            amount=self._amounts(rng, term),
            pan=w.card_pan[card],
            bin=w.card_bin[card],
            chip=chip,
            entry=np.where(chip, E["07"], E["03"]),
            resp=np.where(rng.random(len(term)) < 0.5, R["91"], R["96"]),
        )

    def _background_fraud(self, rng, d) -> dict[str, np.ndarray]:
        """Fraud on random cards elsewhere: no terminal of ours is their common point."""
        w = self.w
        n = rng.poisson(sc.BACKGROUND_FRAUD_PER_10K_CARDS * len(w.card_pan) / 10_000)
        card = rng.integers(0, len(w.card_pan), size=n)
        t = w.day_start(d) + rng.integers(0, DAY, size=n)
        ftype = rng.choice([2, 3, 1, 4], size=n, p=[0.5, 0.2, 0.2, 0.1])
        return _reports(w.card_pan[card], t, self._delay(rng, n), ftype, None)

    @staticmethod
    def _delay(rng, n):
        lo, hi = sc.REPORT_DELAY_DAYS
        return (rng.gamma(2.0, (hi - lo) / 5, size=n).clip(0, hi - lo) + lo) * DAY + rng.integers(
            0, DAY, size=n
        )

    # -- injected behaviours ---------------------------------------------------------
    def _hours(self, term: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Hour of day per row drawn from its terminal's trading profile (``u`` uniform)."""
        return np.searchsorted(self.flat_cdf, term + u) - term * 24

    def _open(self, term: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Whether each time falls in the terminal's opening hours."""
        return self.hour_w[term, (t // 3600) % 24] > 0

    def _times_open_many(self, rng, term: np.ndarray, d: int) -> np.ndarray:
        """One time per row on day ``d`` within each row's terminal's trading hours."""
        hour = self._hours(term, rng.random(len(term)))
        return self.w.day_start(d) + hour * 3600 + rng.integers(0, 3600, size=len(term))

    def _times_open(self, rng, term, d, n):
        hour = self._hours(np.full(n, term), rng.random(n))
        return self.w.day_start(d) + hour * 3600 + rng.integers(0, 3600, size=n)

    def _inside_op(self, rng, b: dict[str, np.ndarray], term: int) -> dict[str, np.ndarray]:
        """An episode's rows moved after the terminal starts trading that day (their
        spacing kept), and cut where it stops: the behaviour shows on every episode day."""
        tm = self.w.term
        if len(b["t"]) and b["t"].min() < tm["op_start"][term]:
            b["t"] = b["t"] + (tm["op_start"][term] - b["t"].min()) + int(rng.integers(60, 3600))
        return take(b, (b["t"] >= tm["op_start"][term]) & (b["t"] < tm["op_end"][term]))

    def _clone_rows(self, rng, e, base):
        """A second device with the same terminal id: its own customers, serial, STANs."""
        w = self.w
        n_genuine = len(self._by_term.rows(e.term))
        n = max(1, rng.poisson(max(n_genuine, 3) * e.params["extra"]))
        t = self._times_open(rng, e.term, self._current_day, n)
        city = int(e.extra["city"])
        lo, hi = w.city_card_range[city]
        card = rng.integers(lo, hi, size=n)
        chip = w.card_chip[card]
        term = np.full(n, e.term)
        amount = self._amounts(rng, term)
        entry = np.where(chip, _choice(rng, sc.CHIP_ENTRY, n, E), E["03"]).astype(np.int8)
        clone = block(
            n,
            term=term,
            dev=1,
            t=t,
            amount=amount,
            pan=w.card_pan[card],
            bin=w.card_bin[card],
            chip=chip,
            entry=entry,
            pin=self._pin(rng, entry, w.card_bin[card], amount),
        )
        return self._inside_op(rng, clone, e.term)

    def _cash_out_rows(self, rng, e, d):
        p = e.params
        n = max(1, rng.poisson(p["per_day"]))
        pans, bins = e.extra["pans"], e.extra["bins"]
        k = rng.integers(0, len(pans), size=n)
        cap = self.cap_txn[e.term]
        cap = cap if np.isfinite(cap) else 5_000_000
        kind = rng.random(n)
        amount = np.where(
            kind < p["near_cap"],
            (cap * rng.uniform(0.97, 0.999, size=n)).astype(np.int64) // 100 * 100,
            np.minimum((rng.choice(sc.CASH_OUT_ROUND_YUAN, size=n) * 100), cap).astype(np.int64),
        )
        night = rng.random(n) < p["night"]
        t = np.where(
            night,
            self.w.day_start(d) + rng.integers(0, 5 * 3600, size=n),
            self._times_open(rng, e.term, d, n),
        )
        # split sales: the same card again within minutes, the parts summing to a round figure
        split = rng.random(n) < p["split"]
        parts = []
        for j in np.flatnonzero(split):
            m = int(rng.integers(2, 5))
            total = int(min(cap * m * 0.9, 20000 * 100 * m) // 100_000 * 100_000) or 100_000
            cuts = np.sort(rng.uniform(0.2, 0.8, size=m - 1))
            share = np.diff(np.r_[0, cuts, 1])
            amt = (share * total).astype(np.int64) // 100 * 100
            amt[-1] = total - amt[:-1].sum()
            parts.append(
                block(
                    m,
                    term=e.term,
                    t=t[j] + np.cumsum(rng.integers(30, 240, size=m)),
                    amount=np.minimum(amt, cap),
                    pan=pans[k[j]],
                    bin=bins[k[j]],
                    entry=E["05"],
                    pin=True,
                )
            )
        keep = ~split
        main = block(
            int(keep.sum()),
            term=e.term,
            t=t[keep],
            amount=amount[keep],
            pan=pans[k[keep]],
            bin=bins[k[keep]],
            entry=E["05"],
            pin=True,
        )
        out = concat([main, *parts])
        return self._inside_op(rng, out, e.term)

    def _card_testing_rows(self, rng, e, d):
        p = e.params
        out = []
        for _ in range(int(p["bursts"])):
            n = max(3, rng.poisson(p["attempts"]))
            pans, bins = sequential_cards(rng, n)
            night = rng.random() < sc.CARD_TESTING_NIGHT
            if night:
                t0 = self.w.day_start(d) + int(rng.integers(0, 5 * 3600))
            else:
                t0 = int(self._times_open(rng, e.term, d, 1)[0])
            t = t0 + np.sort(rng.integers(0, int(p["minutes"] * 60), size=n))
            resp = np.where(
                rng.random(n) < p["decline"], _choice(rng, sc.CARD_TESTING_CODES, n, R), 0
            )
            entry = _choice(rng, sc.CARD_TESTING_ENTRY, n, E)
            out.append(
                block(
                    n,
                    term=e.term,
                    t=t,
                    amount=rng.integers(100, 2000, size=n),
                    pan=pans,
                    bin=bins,
                    chip=False,
                    entry=entry,
                    resp=resp,
                )
            )
        b = concat(out)
        return self._inside_op(rng, b, e.term)

    def _hotspot_rows(self, rng, e, base):
        """Stolen or counterfeit cards accepted here; each is reported later."""
        w = self.w
        share = e.params["share"]
        n_genuine = len(self._by_term.rows(e.term))
        n = max(1, rng.poisson(max(n_genuine, 3) * share / (1 - share)))
        d = self._current_day
        card = rng.integers(0, len(w.card_pan), size=n)
        term = np.full(n, e.term)
        counterfeit = rng.random(n) < sc.HOTSPOT_COUNTERFEIT
        entry = np.where(
            counterfeit, np.where(rng.random(n) < 0.7, E["90"], E["02"]), E["07"]
        ).astype(np.int8)
        amount = (
            self._amounts(rng, term) * rng.uniform(*sc.HOTSPOT_TICKET_FACTOR, size=n)
        ).astype(np.int64)
        amount = np.where(entry == E["07"], np.minimum(amount, 99_900), amount)
        amount = np.minimum(
            amount, np.where(np.isfinite(self.cap_txn[e.term]), self.cap_txn[e.term], 5e6)
        ).astype(np.int64)
        t = self._times_open(rng, e.term, d, n)
        stolen = block(
            n,
            term=term,
            t=t,
            amount=amount,
            pan=w.card_pan[card],
            bin=w.card_bin[card],
            chip=w.card_chip[card],
            entry=entry,
            pin=False,
            rep_delay=self._delay(rng, n).astype(np.int64),
            rep_type=np.where(counterfeit, 0, 1),
            rep_txn=rng.random(n) < e.params["with_txn"],
        )
        return self._inside_op(rng, stolen, e.term)

    def _skim(self, rng, e, base, d) -> dict[str, np.ndarray]:
        """Cards read at a skimming terminal are misused days to weeks later elsewhere."""
        w, tm = self.w, self.w.term
        rows = self._by_term.rows(e.term)
        pans, first = np.unique(base["pan"][rows], return_index=True)
        pick = rng.random(len(pans)) < e.params["share"]
        pans, visit = pans[pick], base["t"][rows[first[pick]]]
        bins = base["bin"][rows[first[pick]]]
        lo, hi = sc.COMPROMISE_MISUSE_DAYS
        misuse = visit + rng.integers(lo * DAY, hi * DAY, size=len(pans))
        sim_end = w.day_start(w.days)
        ours = (misuse < sim_end) & (rng.random(len(pans)) < e.params["ours"])
        # misuse at one of our own terminals: a real transaction, reported with its txn_id
        if ours.any():
            m = int(ours.sum())
            registered = np.flatnonzero(~tm["ghost"])
            other = registered[rng.integers(0, len(registered), size=m)]
            other = np.where(other == e.term, registered[0], other)
            self.state.pending = concat(
                [
                    self.state.pending,
                    block(
                        m,
                        term=other,
                        t=misuse[ours],
                        amount=rng.integers(50_000, 400_000, size=m) // 100 * 100,
                        pan=pans[ours],
                        bin=bins[ours],
                        chip=True,
                        entry=np.where(rng.random(m) < 0.8, E["90"], E["02"]),
                        rep_delay=self._delay(rng, m).astype(np.int64),
                        rep_type=0,
                        rep_txn=True,
                    ),
                ]
            )
        rest = ~ours
        return _reports(
            pans[rest],
            misuse[rest],
            self._delay(rng, int(rest.sum())),
            np.zeros(int(rest.sum()), dtype=np.int64),
            None,
        )

    # -- report, location and frame assembly ------------------------------------------
    def _row_reports(self, rows, num) -> dict[str, np.ndarray]:
        r = np.flatnonzero(rows["rep_delay"] >= 0)
        if not len(r):
            return _empty_reports()
        ids = np.where(rows["rep_txn"][r], num[r], -1)
        return _reports(
            rows["pan"][r], rows["t"][r], rows["rep_delay"][r], rows["rep_type"][r], ids
        )

    def _locations(self, rng, rows, d, episodes):
        """GPS, cell and IP per row: home with noise, mobile wandering, episode places.

        Returns ``lat, lon, place, ci`` per row and the day's ``places`` table
        (``ip``, ``lac`` per place): place ``i < n_terms`` is terminal ``i`` at home,
        the others are the places of relocation and clone episodes.
        """
        w, tm = self.w, self.w.term
        term = rows["term"]
        n = len(term)
        mobile = tm["kind"][term] == "mobile_pos"
        spread_km = np.where(
            mobile, 0.7 * sc.MOBILE_RANGE_M / 1000 * np.sqrt(rng.random(n)), sc.GPS_NOISE_M / 1000
        )
        lat = tm["lat"][term] + rng.standard_normal(n) * spread_km / 111.0
        lon = tm["lon"][term] + rng.standard_normal(n) * spread_km * self.km_lon[term]
        ci = tm["ci"][term] + np.where(
            mobile, rng.integers(0, 40, size=n), rng.integers(0, 2, size=n)
        )
        place = term.copy()
        ip_tab = [
            tm["ip"]
            + np.where(tm["kind"] == "fixed_pos", 0, (d * 7919 + np.arange(w.n_terms)) % 4096)
        ]
        lac_tab = [tm["lac"]]
        mnc_tab = [tm["mnc"]]
        k_place = w.n_terms
        by_term = ByTerm(term)
        for e in episodes:
            if e.behaviour not in ("relocation", "cloned_terminal"):
                continue
            sel = by_term.rows(e.term)
            if e.behaviour == "cloned_terminal":
                sel = sel[rows["dev"][sel] == 1]
            else:
                sel = sel[(rows["dev"][sel] == 0) & (rng.random(len(sel)) < e.params["share"])]
                if e.params.get("travel") and rng.random() < e.params["travel"]:
                    noon = w.day_start(d) + 14 * 3600
                    sel = sel[rows["t"][sel] >= noon]  # home in the morning, far after lunch
            k = len(sel)
            elat, elon = offset_km(
                np.full(k, e.extra["lat"]),
                np.full(k, e.extra["lon"]),
                rng.standard_normal(k) * sc.GPS_NOISE_M / 1000,
                rng.standard_normal(k) * sc.GPS_NOISE_M / 1000,
            )
            lat[sel], lon[sel] = elat, elon
            ci[sel] = e.extra["ci"] + rng.integers(0, 2, size=k)
            place[sel] = k_place
            ip_tab.append(np.array([e.extra["ip"]]))
            lac_tab.append(np.array([e.extra["lac"]]))
            mnc_tab.append(tm["mnc"][e.term : e.term + 1])
            k_place += 1
        no_gps = ~tm["has_gps"][term]
        lat[no_gps] = np.nan
        lon[no_gps] = np.nan
        places = {
            "ip": np.concatenate(ip_tab),
            "lac": np.concatenate(lac_tab),
            "mnc": np.concatenate(mnc_tab),
        }
        return np.round(lat, 6), np.round(lon, 6), place, ci, places

    def _frame(self, rows, num, stan, lat, lon, place, ci, places) -> pl.DataFrame:
        """Contract columns of the day's rows (strings made by lookup, not per row)."""
        tm, s = self.w.term, self.strings
        term = rows["term"]
        n_terms = self.w.n_terms
        mcc = np.where(rows["mcc"] >= 0, rows["mcc"], self.mcc_int[term]).astype(np.int64)
        serial_idx = np.where(
            tm["reports_serial"][term], term + n_terms * rows["dev"].astype(np.int64), 2 * n_terms
        )
        t_us = rows["t"] * 1_000_000
        when = t_us.astype("datetime64[us]")
        year = when.astype("datetime64[Y]").astype(np.int64) + 1970
        doy = (when.astype("datetime64[D]") - when.astype("datetime64[Y]")).astype(np.int64) + 1
        hour = (rows["t"] // 3600) % 24
        rrn_prefix = ((year % 10) * 1000 + doy) * 100 + hour
        cell_prefix = fmt.cell_prefixes(places["mnc"], places["lac"])
        df = pl.DataFrame(
            {
                "txn_id": self._ids(num),
                "terminal_id": fmt.gather(s["tid"], term),
                "merchant_id": fmt.gather(s["mid"], term),
                "txn_time": pl.Series(t_us).cast(pl.Datetime("us")),
                "txn_type": fmt.gather(s["ttype"], rows["ttype"]),
                "amount_minor": rows["amount"],
                "currency": fmt.gather(s["currency"], np.zeros(len(term), dtype=np.int64)),
                "pan": pl.Series(rows["pan"]).cast(pl.String),
                "card_bin": fmt.gather(s["bin"], rows["bin"]),
                "card_last4": fmt.gather(
                    fmt.zero_padded(4), (rows["pan"] % np.uint64(10_000)).astype(np.int64)
                ),
                "card_type": fmt.gather(s["card_type"], rows["bin"]),
                "card_country": fmt.gather(s["country"], rows["bin"]),
                "entry_mode": fmt.gather(s["entry"], rows["entry"]),
                "pin_entered": rows["pin"],
                "mcc": fmt.gather(fmt.zero_padded(4), mcc),
                "response_code": fmt.gather(s["resp"], rows["resp"]),
                "stan": fmt.gather(fmt.zero_padded(6), stan),
                "rrn": fmt.gather(fmt.zero_padded(6), rrn_prefix),
                "stan2": fmt.gather(fmt.zero_padded(6), stan),
                "original_txn_id": self._ids(rows["orig_num"]),
                "device_serial": fmt.gather(s["serial"], serial_idx),
                "terminal_lat": lat,
                "terminal_lon": lon,
                "cell_id": fmt.gather(cell_prefix, place),
                "ci": fmt.gather(fmt.decimal(5), ci),
                "ip_address": fmt.gather(fmt.ip_strings(places["ip"]), place),
            },
            nan_to_null=True,
        )
        return df.with_columns(
            rrn=pl.col("rrn") + pl.col("stan2"), cell_id=pl.col("cell_id") + pl.col("ci")
        ).select(TXN_COLUMNS)

    @staticmethod
    def _ids(num: np.ndarray) -> pl.Series:
        """``TX`` + number; null where the number is negative (no original)."""
        s = pl.Series(num)
        return pl.select(pl.when(s >= 0).then(pl.lit("TX") + s.cast(pl.String))).to_series()

    def events(self, d: int) -> pl.DataFrame:
        """Telemetry of trial day ``d``: its own random stream, so it can be made in
        another thread than the transactions (days in order)."""
        from pipelines.simulate.events import day_events

        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 3, d]))
        return day_events(self, rng, d, self.w.episodes_on(d))


FRAUD_TYPE_IDX = {t: i for i, t in enumerate(FRAUD_TYPES)}


def _reports(pans, t, delay, ftype, txn_num) -> dict[str, np.ndarray]:
    """Report columns as arrays (framed once per day by :func:`_report_frame`)."""
    n = len(pans)
    return {
        "pan": np.asarray(pans, dtype=np.uint64),
        "t": np.asarray(t, dtype=np.int64),
        "delay": np.asarray(delay, dtype=np.int64),
        "ftype": np.asarray(ftype, dtype=np.int64),
        "num": np.full(n, -1, dtype=np.int64)
        if txn_num is None
        else np.asarray(txn_num, dtype=np.int64),
    }


def _empty_reports() -> dict[str, np.ndarray]:
    return _reports(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), None)


def _report_frame(parts: list[dict[str, np.ndarray]]) -> pl.DataFrame:
    """The day's fraud reports (``report_id`` is numbered when all days are done)."""
    a = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    pan = pl.Series(a["pan"]).cast(pl.String)
    return pl.DataFrame(
        {
            "report_id": pl.Series([None] * len(pan), dtype=pl.String),
            "pan": pan,
            "card_bin": pan.str.slice(0, 6),
            "card_last4": pan.str.slice(-4),
            "txn_id": DayGenerator._ids(a["num"]),
            "fraud_time": pl.Series(a["t"] * 1_000_000).cast(pl.Datetime("us")),
            "reported_at": pl.Series((a["t"] + a["delay"]) * 1_000_000).cast(pl.Datetime("us")),
            "fraud_type": fmt.gather(fmt.table(FRAUD_TYPES), a["ftype"]),
        }
    )
