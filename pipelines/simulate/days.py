"""One local day of the trial: transactions, terminal events and fraud reports, vectorised.

A day is built from *blocks* of rows (dicts of equal-length numpy arrays): the
legitimate traffic, its follow-ups (reversals, voids, refunds, completions), the
background noise and each active injected episode. Blocks are concatenated,
sorted by time, numbered, and only then turned into strings, so an injected row
is numbered and formatted exactly like a legitimate one.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from features.schema import CARD_TYPES, FRAUD_TYPES, TXN_TYPES
from pipelines.simulate import fmt
from pipelines.simulate import scenarios as sc
from pipelines.simulate.blocks import (
    BIN_PREFIX_STR,
    BIN_TYPE_IDX,
    ENTRY,
    RESP,
    TXN_COLUMNS,
    ByTerm,
    DayOutput,
    E,
    R,
    T,
    _choice,
    _empty_reports,
    _pick,
    _reports,
    allowed_matrix,
    block,
    concat,
    new_state,
    policy_value,
    take,
)
from pipelines.simulate.cards import (
    BIN_COUNTRY,
    BIN_TYPE,
)
from pipelines.simulate.injections import InjectedRows
from pipelines.simulate.reference import CATEGORIES, WEEKDAY
from pipelines.simulate.world import DAY, World, offset_km


class DayGenerator(InjectedRows):
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
