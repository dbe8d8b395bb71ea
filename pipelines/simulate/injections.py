"""The rows of injected behaviours: cloned terminals, cash-out, card testing, fraud hotspots and skimming (compromise), drawn inside each terminal's opening hours.

A mixin of :class:`pipelines.simulate.days.DayGenerator`: the methods use the
generator's world, calendars and random state.
"""

from __future__ import annotations

import numpy as np

from pipelines.simulate import scenarios as sc
from pipelines.simulate.blocks import (
    E,
    R,
    _choice,
    _reports,
    block,
    concat,
    take,
)
from pipelines.simulate.cards import (
    sequential_cards,
)
from pipelines.simulate.world import DAY


class InjectedRows:
    """Row generators of the injected behaviours (mixed into ``DayGenerator``)."""

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
