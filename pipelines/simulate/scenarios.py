"""Every knob of the simulator in one documented place: background rates, trial
policies and the injected behaviours with their intensities (blatant -> subtle).

This module is the simulator's answer key. Detection code (``features/``,
``models/``, ``pipelines/detect/run.py``) must never import it: a detector tuned on
these numbers would be measured against itself (``tests/pipelines/
test_simulate.py`` checks that no detector module imports ``pipelines.simulate``).

Amounts are minor units (fen). Rates are per terminal and local day unless said
otherwise. Each behaviour has an ordered tuple of intensities, index 0 the most
blatant; an injected episode draws one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# Population and background behaviour
# ---------------------------------------------------------------------------

#: Share of terminals that get one injected behaviour; a few of them get two.
INJECTED_SHARE = 0.06
SECOND_BEHAVIOUR_SHARE = 0.15
#: Terminals transacting under an id that is not in the registry, per 1000 registered.
GHOST_TERMINALS_PER_1000 = 3
#: Share of terminals whose staff are "sloppy": they occasionally accept what the
#: policy forbids (credit at a debit-only terminal, a swipe, a sale after hours) and
#: got a policy sized for a smaller merchant. This is the natural non-compliance.
SLOPPY_SHARE = 0.06
#: Share of terminals that are another till of an earlier terminal's merchant.
SAME_MERCHANT_SHARE = 0.12
#: Terminal kinds and their shares.
KIND_SHARES = {"fixed_pos": 0.55, "smart_pos": 0.33, "mobile_pos": 0.12}
#: Share of fixed terminals without a GPS module (they report cell and IP only).
#: Whether a terminal sends its serial in messages depends on its model (reference.py).
FIXED_WITHOUT_GPS_SHARE = 0.3
#: GPS noise (metres, one standard deviation) for fixed/smart terminals; mobile
#: terminals wander within this radius (metres) of their registered address.
GPS_NOISE_M = 25.0
MOBILE_RANGE_M = 6000.0

#: Daily volume: lognormal around the MCC's median times VOLUME_SCALE, clipped to this range.
DAILY_TXN_RANGE = (2, 400)
VOLUME_SCALE = 0.65
#: Transaction-type mix of legitimate traffic (per approved purchase).
REFUND_RATE = 0.006
VOID_RATE = 0.004
REVERSAL_RATE = 0.003
BALANCE_INQUIRY_RATE = 0.002  # only where the policy allows it, or at sloppy terminals
PREAUTH_SHARE_HOTEL = 0.25  # share of hotel/car-rental sales done as preauth + completion
#: Normal declines (share of attempts) and their DE39 codes with weights.
DECLINE_RATE = 0.025
DECLINE_CODES = {
    "51": 0.45,
    "55": 0.2,
    "05": 0.12,
    "54": 0.08,
    "61": 0.07,
    "14": 0.03,
    "91": 0.03,
    "96": 0.02,
}
#: Entry modes: chip cards (code -> weight), magstripe-only cards, rare legit fallback.
CHIP_ENTRY = {"07": 0.48, "05": 0.36, "03": 0.14, "91": 0.02}
MAG_ENTRY = {"02": 0.6, "90": 0.4}
LEGIT_FALLBACK_RATE = 0.00003
#: Customers: a card pool per terminal (regulars repeat), plus visitors from anywhere.
POOL_SIZE_PER_DAILY_TXN = 20
#: Skew towards regulars: customer = window start + width * u**REGULAR_SKEW.
REGULAR_SKEW = 1.25
VISITOR_SHARE = 0.05
CARDS_PER_TERMINAL = 150
#: Background noise that must not be flagged.
ROUND_AMOUNT_RATE = 0.01  # an occasional whole-hundred-yuan ticket anywhere
DECLINE_BURST_DAILY_PROB = 0.004  # a network hiccup: a few 91/96 in minutes
BACKGROUND_FRAUD_PER_10K_CARDS = 4.0  # per day, cards with no common terminal
REPORT_DELAY_DAYS = (2, 45)
#: Share of transaction files written with an explicit +08:00 offset (every 7th day).
OFFSET_FILE_EVERY = 7

# ---------------------------------------------------------------------------
# Trial policies (written to policies.toml). Amounts in fen.
# ---------------------------------------------------------------------------

_ALL_CARDS = ["debit", "credit", "prepaid", "unknown"]
_GEOFENCE = {"fixed_pos": 500, "smart_pos": 500, "mobile_pos": 20000}

POLICIES: dict[str, dict[str, object]] = {
    "default": {
        "max_txn_amount_minor": 5_000_000,
        "max_daily_amount_minor": 30_000_000,
        "max_daily_txn_count": 1200,
        "max_same_card_per_day": 10,
        "allowed_card_types": _ALL_CARDS,
        "allowed_txn_types": [
            "purchase",
            "refund",
            "void",
            "reversal",
            "preauth",
            "preauth_complete",
            "balance_inquiry",
        ],
        "allowed_entry_modes": ["02", "03", "05", "07", "90", "91"],
        "geofence_m": _GEOFENCE,
    },
    "strict": {
        "max_txn_amount_minor": 500_000,
        "max_daily_amount_minor": 5_000_000,
        "max_daily_txn_count": 300,
        "max_same_card_per_day": 4,
        "allowed_card_types": ["debit", "credit", "prepaid"],
        "allowed_txn_types": ["purchase", "refund", "void", "reversal"],
        "allowed_entry_modes": ["03", "05", "07", "91"],
        "business_hours": ["07:00", "23:00"],
        "geofence_m": {"fixed_pos": 300, "smart_pos": 300, "mobile_pos": 10000},
    },
    "debit_only": {
        "max_txn_amount_minor": 200_000,
        "max_daily_amount_minor": 2_000_000,
        "max_daily_txn_count": 250,
        "max_same_card_per_day": 3,
        "allowed_card_types": ["debit"],
        "allowed_txn_types": ["purchase", "refund", "void", "reversal"],
        "allowed_entry_modes": ["03", "05", "07"],
        "business_hours": ["08:00", "22:00"],
        "geofence_m": _GEOFENCE,
    },
    "night_trade": {
        "max_txn_amount_minor": 1_000_000,
        "max_daily_amount_minor": 8_000_000,
        "max_daily_txn_count": 300,
        "max_same_card_per_day": 6,
        "allowed_card_types": _ALL_CARDS,
        "allowed_txn_types": ["purchase", "refund", "void", "reversal"],
        "allowed_entry_modes": ["02", "03", "05", "07", "90", "91"],
        "business_hours": ["16:00", "04:00"],
        "geofence_m": _GEOFENCE,
    },
    "hospitality": {
        "max_txn_amount_minor": 10_000_000,
        "max_daily_amount_minor": 50_000_000,
        "max_daily_txn_count": 500,
        "max_same_card_per_day": 8,
        "allowed_card_types": _ALL_CARDS,
        "allowed_txn_types": [
            "purchase",
            "refund",
            "void",
            "reversal",
            "preauth",
            "preauth_complete",
        ],
        "allowed_entry_modes": ["02", "03", "05", "07", "90", "91"],
        "geofence_m": _GEOFENCE,
    },
}
#: A policy id some registry rows carry but policies.toml does not define
#: (such terminals are judged under ``default``).
UNKNOWN_POLICY_ID = "pilot_2025q3"
UNKNOWN_POLICY_SHARE = 0.08  # of the terminals on the default policy
#: How the acquirer sizes a policy: typical daily amount and count times this
#: headroom must fit under the caps.
POLICY_HEADROOM = 2.5

# ---------------------------------------------------------------------------
# Injected behaviours. Index 0 = blatant ... last = subtle.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Intensity:
    """One intensity level of a behaviour: a name and its parameters."""

    name: str
    params: dict[str, float] = field(default_factory=dict)


#: Episode length in days (min, max) per behaviour.
EPISODE_DAYS: dict[str, tuple[int, int]] = {
    "relocation": (3, 12),
    "cloned_terminal": (3, 10),
    "mcc_mismatch": (4, 15),
    "cash_out": (3, 12),
    "card_testing": (1, 3),
    "fallback_abuse": (3, 10),
    "fraud_hotspot": (5, 15),
    "card_compromise": (5, 15),
    "pan_exposure": (2, 8),
    "malfunction": (2, 6),
    "unregistered_use": (1, 6),
}

INTENSITIES: dict[str, tuple[Intensity, ...]] = {
    # share: share of the terminal's traffic reported from the new place; km: distance;
    # other_city: 1 = moved to another city; travel: share of days with rows at both places
    "relocation": (
        Intensity("blatant", {"share": 1.0, "km": 0.0, "other_city": 1, "travel": 0.5}),
        Intensity("medium", {"share": 1.0, "km": 12.0, "other_city": 0, "travel": 0.0}),
        Intensity("subtle", {"share": 0.6, "km": 2.5, "other_city": 0, "travel": 0.0}),
    ),
    # extra: clone volume relative to the genuine device's; other_city as above
    "cloned_terminal": (
        Intensity("blatant", {"extra": 0.8, "other_city": 1, "km": 0.0}),
        Intensity("medium", {"extra": 0.3, "other_city": 0, "km": 8.0}),
        Intensity("subtle", {"extra": 0.06, "other_city": 0, "km": 1.5}),
    ),
    # share: rows whose DE18 is the cheaper MCC
    "mcc_mismatch": (
        Intensity("blatant", {"share": 1.0}),
        Intensity("medium", {"share": 0.5}),
        Intensity("subtle", {"share": 0.08}),
    ),
    # per_day: cash-out sales a day; cards: size of the ring's card set;
    # night: share at 00:00-05:00; near_cap: share just under the per-txn cap;
    # split: share made of split sales summing to a round figure
    "cash_out": (
        Intensity(
            "blatant", {"per_day": 14, "cards": 6, "night": 0.6, "near_cap": 0.4, "split": 0.3}
        ),
        Intensity(
            "medium", {"per_day": 6, "cards": 4, "night": 0.3, "near_cap": 0.3, "split": 0.3}
        ),
        Intensity(
            "subtle", {"per_day": 2, "cards": 3, "night": 0.1, "near_cap": 0.5, "split": 0.2}
        ),
    ),
    # attempts per burst, bursts per day, decline share, minutes the burst lasts
    "card_testing": (
        Intensity("blatant", {"attempts": 120, "bursts": 2, "decline": 0.85, "minutes": 25}),
        Intensity("medium", {"attempts": 40, "bursts": 1, "decline": 0.7, "minutes": 40}),
        Intensity("subtle", {"attempts": 12, "bursts": 1, "decline": 0.5, "minutes": 90}),
    ),
    # share of chip-card rows read by magstripe (80/90/02) or keyed (01)
    "fallback_abuse": (
        Intensity("blatant", {"share": 0.5, "manual": 0.2}),
        Intensity("medium", {"share": 0.15, "manual": 0.2}),
        Intensity("subtle", {"share": 0.04, "manual": 0.3}),
    ),
    # share: share of the terminal's sales made with stolen/counterfeit cards;
    # with_txn: share of the reports that name the txn_id
    "fraud_hotspot": (
        Intensity("blatant", {"share": 0.3, "with_txn": 0.85}),
        Intensity("medium", {"share": 0.12, "with_txn": 0.8}),
        Intensity("subtle", {"share": 0.05, "with_txn": 0.7}),
    ),
    # share: share of cards seen in the window that are skimmed and later misused;
    # ours: share of that misuse happening at our own terminals (report names txn_id)
    "card_compromise": (
        Intensity("blatant", {"share": 0.4, "ours": 0.4}),
        Intensity("medium", {"share": 0.15, "ours": 0.3}),
        Intensity("subtle", {"share": 0.06, "ours": 0.3}),
    ),
    # events a day whose detail carries a card number; grouped: share written 4-4-4-4
    "pan_exposure": (
        Intensity("blatant", {"per_day": 20, "grouped": 0.3}),
        Intensity("medium", {"per_day": 4, "grouped": 0.5}),
        Intensity("subtle", {"per_day": 0.4, "grouped": 0.5}),
    ),
    # technical declines, extra reversals, clock-skewed rows, duplicate STANs, reboots
    "malfunction": (
        Intensity(
            "blatant",
            {"tech": 0.3, "reversal": 0.08, "skew": 0.05, "dup_stan": 0.05, "reboots": 12},
        ),
        Intensity(
            "medium",
            {"tech": 0.12, "reversal": 0.04, "skew": 0.01, "dup_stan": 0.02, "reboots": 5},
        ),
        Intensity(
            "subtle",
            {"tech": 0.06, "reversal": 0.02, "skew": 0.003, "dup_stan": 0.01, "reboots": 2},
        ),
    ),
    # hours of use outside the registry window (before activation, after trial end,
    # after suspension/termination); unknown-id terminals transact for the episode
    "unregistered_use": (
        Intensity("blatant", {"hours": 24 * 6}),
        Intensity("medium", {"hours": 24 * 2}),
        Intensity("subtle", {"hours": 5}),
    ),
}
#: Kinds of activation-window violation drawn for injected ``unregistered_use``.
UNREGISTERED_KINDS = (
    "before_activation",
    "after_trial_end",
    "after_suspension",
    "after_termination",
)
#: Cheaper MCCs that MCC jumpers send instead of their registered one.
MCC_JUMP_TARGETS = ("5411", "5331", "8211", "8398", "5499")
#: Cash-out round figures (yuan), capped at the policy's per-transaction cap.
CASH_OUT_ROUND_YUAN = (2000, 3000, 5000, 8888, 9999, 10000)
#: Share of card-testing bursts at 00:00-05:00; entry modes of the attempts.
CARD_TESTING_NIGHT = 0.6
CARD_TESTING_ENTRY = {"01": 0.4, "90": 0.4, "02": 0.2}
#: Fraud hotspot: share of counterfeit (swiped) vs lost/stolen (contactless) cards,
#: and their tickets relative to the merchant's usual ones.
HOTSPOT_COUNTERFEIT = 0.5
HOTSPOT_TICKET_FACTOR = (1.0, 1.8)
#: Card compromise: days from the visit at the skimmer to the misuse.
COMPROMISE_MISUSE_DAYS = (3, 30)
#: Decline codes of card-testing attempts (weights).
CARD_TESTING_CODES = {"14": 0.3, "54": 0.2, "05": 0.2, "51": 0.2, "55": 0.1}
#: Behaviours that are injected (the others are derived from data and policy).
INJECTED = tuple(INTENSITIES)
DERIVED = ("trial_limit_breach", "disallowed_use", "unregistered_use")
