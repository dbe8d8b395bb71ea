"""The single source of truth for TrialGuard's columns, codes and tables.

Everything that names a column derives it from here: the ingest validators,
the Great Expectations suites, the DuckDB DDL, the simulator and the tests.
The contract these definitions implement is ``docs/data-contract.md``.

Timestamps are stored as local wall-clock time in the configured zone
(default ``Asia/Shanghai``, which has no daylight-saving time), as naive
``TIMESTAMP`` values; an input timestamp with an offset is converted to that
zone at ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

# ---------------------------------------------------------------------------
# Code lists (exact, lower case, as in the contract)
# ---------------------------------------------------------------------------

TERMINAL_KINDS: tuple[str, ...] = ("fixed_pos", "mobile_pos", "smart_pos")
TERMINAL_STATUSES: tuple[str, ...] = ("pending", "active", "suspended", "terminated")
TXN_TYPES: tuple[str, ...] = (
    "purchase",
    "refund",
    "void",
    "reversal",
    "preauth",
    "preauth_complete",
    "balance_inquiry",
    "cash_advance",
)
CARD_TYPES: tuple[str, ...] = ("debit", "credit", "prepaid", "unknown")
ENTRY_MODES: dict[str, str] = {
    "01": "manual",
    "02": "magstripe",
    "03": "barcode/QR",
    "05": "chip",
    "07": "contactless chip",
    "80": "chip fallback to magstripe",
    "90": "full magstripe",
    "91": "contactless magstripe",
}
EVENT_TYPES: tuple[str, ...] = (
    "sign_on",
    "heartbeat",
    "location",
    "sim_change",
    "firmware_update",
    "key_download",
    "tamper",
    "reboot",
)
FRAUD_TYPES: tuple[str, ...] = (
    "counterfeit",
    "lost_stolen",
    "card_not_present",
    "account_takeover",
    "other",
)
#: Transaction types that count towards trial caps (when approved).
CAP_TXN_TYPES: tuple[str, ...] = ("purchase", "preauth_complete", "cash_advance")
APPROVED_RESPONSE_CODE = "00"

#: Behaviour code -> category (contract "behaviour codes").
BEHAVIOURS: dict[str, str] = {
    "relocation": "illegal_terminal",
    "cloned_terminal": "illegal_terminal",
    "mcc_mismatch": "illegal_terminal",
    "cash_out": "illegal_terminal",
    "card_testing": "illegal_terminal",
    "fallback_abuse": "illegal_terminal",
    "unregistered_use": "illegal_terminal",
    "fraud_hotspot": "illegal_terminal",
    "card_compromise": "data_leakage",
    "pan_exposure": "data_leakage",
    "trial_limit_breach": "non_compliance",
    "disallowed_use": "non_compliance",
    "malfunction": "operational",
}
CATEGORIES: tuple[str, ...] = ("illegal_terminal", "data_leakage", "non_compliance", "operational")
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
FLAG_STATUSES: tuple[str, ...] = ("open", "confirmed", "dismissed", "snoozed")
DECISIONS: tuple[str, ...] = ("confirmed", "dismissed", "snoozed")
VERDICTS: tuple[str, ...] = ("pass", "extend", "terminate")

#: Policy keys (contract "policies"); an absent key means no limit of that kind.
POLICY_KEYS: dict[str, str] = {
    "max_txn_amount_minor": "int",
    "max_daily_amount_minor": "int",
    "max_daily_txn_count": "int",
    "max_same_card_per_day": "int",
    "allowed_card_types": "list[str]",
    "allowed_txn_types": "list[str]",
    "allowed_entry_modes": "list[str]",
    "business_hours": "list[str]",
    "geofence_m": "dict[str,int]",
}
DEFAULT_POLICY_ID = "default"

# ---------------------------------------------------------------------------
# Input columns
# ---------------------------------------------------------------------------

#: Logical types used by the contract, with their polars and DuckDB types.
POLARS_TYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "ts": pl.Datetime("us"),
}
DUCKDB_TYPES: dict[str, str] = {
    "str": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "date": "DATE",
    "ts": "TIMESTAMP",
    "json": "JSON",
}


@dataclass(frozen=True)
class Column:
    """One column of an input file or a stored table.

    Parameters
    ----------
    name : str
        Column name, exactly as in the contract.
    dtype : str
        Logical type: ``str``, ``int``, ``float``, ``bool``, ``date``, ``ts`` or ``json``.
    required : bool
        Whether a value must be present in every row.
    pattern : str or None
        Full-match regular expression a ``str`` value must satisfy.
    allowed : tuple of str or None
        The values a ``str`` column may take.
    min_value : float or None
        Smallest allowed numeric value.
    description : str
        What the column means (used in docs and Data Docs).
    free_text : bool
        Whether the column is free text that is scanned for card numbers.
    max_value : float or None
        Largest allowed numeric value.
    """

    name: str
    dtype: str
    required: bool = False
    pattern: str | None = None
    allowed: tuple[str, ...] | None = None
    min_value: float | None = None
    description: str = ""
    free_text: bool = False
    max_value: float | None = None

    @property
    def polars_type(self) -> pl.DataType:
        """The polars type of the column."""
        return POLARS_TYPES.get(self.dtype, pl.String())

    @property
    def duckdb_type(self) -> str:
        """The DuckDB type of the column."""
        return DUCKDB_TYPES[self.dtype]


@dataclass(frozen=True)
class InputKind:
    """One kind of input file: its columns and how rows are keyed.

    ``one_of`` lists groups of columns of which at least one must be present
    (``pan`` or ``card_token``). ``key`` is the column whose repeat makes a
    duplicate, or ``None`` when rows are not de-duplicated by key.
    """

    name: str
    columns: tuple[Column, ...]
    key: str | None
    one_of: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    @property
    def names(self) -> tuple[str, ...]:
        """Column names, in contract order."""
        return tuple(c.name for c in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        """Names of the required columns."""
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}; columns are {', '.join(self.names)}")


DIGITS = r"[0-9]+"
TERMINAL_ID_PATTERN = r"[0-9A-Za-z]{8}"
MERCHANT_ID_PATTERN = r"[0-9A-Za-z]{15}"
MCC_PATTERN = r"[0-9]{4}"

TERMINALS = InputKind(
    name="terminals",
    key=None,  # versioned: (terminal_id, updated_at) identifies a row
    columns=(
        Column("terminal_id", "str", True, TERMINAL_ID_PATTERN, description="DE41"),
        Column(
            "merchant_id",
            "str",
            True,
            MERCHANT_ID_PATTERN,
            description="DE42; acquirer(3)+area(4)+MCC(4)+serial(4)",
        ),
        Column("serial_number", "str", True, description="hardware serial bound at activation"),
        Column("merchant_name", "str", True, description="may be Chinese", free_text=True),
        Column("registered_mcc", "str", True, MCC_PATTERN, description="ISO 18245 / GB/T 20548"),
        Column(
            "registered_lat",
            "float",
            True,
            min_value=-90.0,
            max_value=90.0,
            description="WGS84 latitude of the registered address",
        ),
        Column(
            "registered_lon",
            "float",
            True,
            min_value=-180.0,
            max_value=180.0,
            description="WGS84 longitude of the registered address",
        ),
        Column(
            "region_code", "str", True, r"[0-9]{6}", description="administrative division code"
        ),
        Column("terminal_kind", "str", True, allowed=TERMINAL_KINDS),
        Column("terminal_model", "str", description="maker and model"),
        Column("channel_id", "str", description="service provider / agent"),
        Column("policy_id", "str", True, description="trial policy that applies"),
        Column("activated_at", "ts", description="empty = not activated yet"),
        Column("trial_start", "date", True, description="trial window start, inclusive"),
        Column("trial_end", "date", True, description="trial window end, inclusive"),
        Column("status", "str", True, allowed=TERMINAL_STATUSES),
        Column("updated_at", "ts", True, description="registry change time"),
    ),
)

TRANSACTIONS = InputKind(
    name="transactions",
    key="txn_id",
    one_of=(("pan", "card_token"),),
    columns=(
        Column("txn_id", "str", True, description="unique per acquirer"),
        Column("terminal_id", "str", True, TERMINAL_ID_PATTERN, description="DE41"),
        Column("merchant_id", "str", True, MERCHANT_ID_PATTERN, description="DE42"),
        Column("txn_time", "ts", True, description="host receive time"),
        Column("txn_type", "str", True, allowed=TXN_TYPES, description="from MTI + DE3"),
        Column("amount_minor", "int", True, min_value=0, description="DE4, minor units"),
        Column("currency", "str", True, r"[0-9]{3}", description="DE49, ISO 4217 numeric"),
        Column("pan", "str", False, r"[0-9]{12,19}", description="raw DE2; replaced at ingest"),
        Column("card_token", "str", False, description="keyed hash of the PAN"),
        Column("card_bin", "str", False, r"[0-9]{6,8}", description="first 6 (or 8) digits"),
        Column("card_last4", "str", False, r"[0-9]{4}", description="last 4 digits"),
        Column("card_type", "str", True, allowed=CARD_TYPES),
        Column("card_country", "str", False, r"[A-Z]{2}", description="issuing country"),
        Column(
            "entry_mode", "str", True, allowed=tuple(ENTRY_MODES), description="DE22 positions 1-2"
        ),
        Column("pin_entered", "bool"),
        Column("mcc", "str", True, MCC_PATTERN, description="DE18 as sent"),
        Column("response_code", "str", True, r"[0-9A-Za-z]{2}", description="DE39"),
        Column("stan", "str", False, r"[0-9]{6}", description="DE11"),
        Column("rrn", "str", False, r"[0-9A-Za-z]{12}", description="DE37"),
        Column("original_txn_id", "str", description="purchase a refund/void/reversal refers to"),
        Column("device_serial", "str", description="serial reported by the device"),
        Column(
            "terminal_lat",
            "float",
            min_value=-90.0,
            max_value=90.0,
            description="reported GPS latitude",
        ),
        Column(
            "terminal_lon",
            "float",
            min_value=-180.0,
            max_value=180.0,
            description="reported GPS longitude",
        ),
        Column("cell_id", "str", description="MCC-MNC-LAC-CI"),
        Column("ip_address", "str"),
    ),
)

TERMINAL_EVENTS = InputKind(
    name="terminal_events",
    key=None,  # event_id is derived from the row content at ingest
    columns=(
        Column("terminal_id", "str", True, TERMINAL_ID_PATTERN),
        Column("event_time", "ts", True),
        Column("event_type", "str", True, allowed=EVENT_TYPES),
        Column("device_serial", "str"),
        Column("lat", "float", min_value=-90.0, max_value=90.0),
        Column("lon", "float", min_value=-180.0, max_value=180.0),
        Column("cell_id", "str"),
        Column("ip_address", "str"),
        Column("app_version", "str"),
        Column("detail", "str", description="free text", free_text=True),
    ),
)

FRAUD_REPORTS = InputKind(
    name="fraud_reports",
    key="report_id",
    one_of=(("pan", "card_token"),),
    columns=(
        Column("report_id", "str", True),
        Column("pan", "str", False, r"[0-9]{12,19}"),
        Column("card_token", "str", False),
        Column("card_bin", "str", False, r"[0-9]{6,8}"),
        Column("card_last4", "str", False, r"[0-9]{4}"),
        Column("txn_id", "str", description="the fraudulent transaction, when known"),
        Column("fraud_time", "ts", True),
        Column("reported_at", "ts", True, description="must not be before fraud_time"),
        Column("fraud_type", "str", True, allowed=FRAUD_TYPES),
    ),
)

INPUT_KINDS: dict[str, InputKind] = {
    k.name: k for k in (TERMINALS, TRANSACTIONS, TERMINAL_EVENTS, FRAUD_REPORTS)
}
POLICIES_KIND = "policies"

#: Columns every identifier-format check treats as "not free text".
IDENTIFIER_COLUMNS: tuple[str, ...] = (
    "terminal_id",
    "merchant_id",
    "rrn",
    "stan",
    "serial_number",
    "device_serial",
    "txn_id",
    "original_txn_id",
    "report_id",
)

# ---------------------------------------------------------------------------
# Stored tables (DuckDB). Input tables store the contract columns without
# ``pan``, plus the bookkeeping columns below.
# ---------------------------------------------------------------------------

PROVENANCE_COLUMNS: tuple[Column, ...] = (
    Column("extra", "json", description="unknown extra input columns, kept aside (redacted)"),
    Column("file_id", "str", True, description="content hash of the source file"),
    Column("line_no", "int", True, description="line (CSV) or record number in the source file"),
)


def stored_columns(kind: InputKind) -> tuple[Column, ...]:
    """Columns of the DuckDB table that stores rows of ``kind`` (never ``pan``)."""
    cols = [c for c in kind.columns if c.name != "pan"]
    if kind is TERMINAL_EVENTS:
        cols.insert(
            0, Column("event_id", "str", True, description="stable id derived from the row")
        )
    if kind is TRANSACTIONS:
        cols.append(
            Column("local_date", "date", True, description="local calendar day of txn_time")
        )
    return tuple(cols) + PROVENANCE_COLUMNS


FLAGS_COLUMNS: tuple[Column, ...] = (
    Column("flag_id", "str", True, description="stable id"),
    Column("terminal_id", "str", True),
    Column("merchant_id", "str"),
    Column("behaviour", "str", True, allowed=tuple(BEHAVIOURS)),
    Column("category", "str", True, allowed=CATEGORIES),
    Column("score", "float", True, min_value=0.0),
    Column("severity", "str", True, allowed=SEVERITIES),
    Column("first_seen", "date", True),
    Column("last_seen", "date", True),
    Column("reasons", "json", True, description="list of {code, text, observed, threshold}"),
    Column("evidence", "json", True, description="up to 50 txn_ids or event ids"),
    Column("status", "str", True, allowed=FLAG_STATUSES),
    Column("run_id", "str", True, description="the run that last touched it"),
)

DISPOSITIONS_COLUMNS: tuple[Column, ...] = (
    Column("flag_id", "str", True),
    Column("decision", "str", True, allowed=DECISIONS),
    Column("analyst", "str", True),
    Column("note", "str"),
    Column("decided_at", "ts", True),
    Column("snooze_until", "date"),
)

AT_RISK_CARDS_COLUMNS: tuple[Column, ...] = (
    Column("flag_id", "str", True),
    Column("terminal_id", "str", True),
    Column("card_token", "str", True),
    Column("card_bin", "str"),
    Column("card_last4", "str"),
    Column("first_seen", "ts"),
    Column("last_seen", "ts"),
    Column("run_id", "str", True),
)

QUARANTINE_COLUMNS: tuple[Column, ...] = (
    Column("file_id", "str", True),
    Column("source_path", "str", True),
    Column("kind", "str", True),
    Column("line_no", "int", True),
    Column("reason", "str", True, description="why the row was rejected, in words"),
    Column("raw_row", "json", description="the row as read, card numbers redacted"),
    Column("quarantined_at", "ts", True),
)

MANIFEST_COLUMNS: tuple[Column, ...] = (
    Column("file_id", "str", True, description="sha256 of the file's bytes"),
    Column("source_path", "str", True),
    Column("kind", "str"),
    Column("format", "str"),
    Column("encoding", "str"),
    Column("status", "str", True, allowed=("loaded", "rejected")),
    Column("rows_read", "int"),
    Column("accepted", "int"),
    Column("quarantined", "int"),
    Column("duplicates", "int"),
    Column("pan_redactions", "int", description="card-number-like runs redacted in free text"),
    Column("gate_success", "bool", description="Great Expectations gate outcome"),
    Column("message", "str"),
    Column("started_at", "ts"),
    Column("finished_at", "ts"),
)

RUNS_COLUMNS: tuple[Column, ...] = (
    Column("run_id", "str", True),
    Column("command", "str", True, description="ingest, run, nightly, backtest ..."),
    Column("as_of", "date"),
    Column("started_at", "ts", True),
    Column("finished_at", "ts"),
    Column("status", "str", True, allowed=("running", "succeeded", "failed")),
    Column("inputs", "json", description="input files with content hashes"),
    Column("code_version", "str"),
    Column("config_version", "str"),
    Column("policy_version", "str"),
    Column("row_counts", "json"),
    Column("duration_s", "float"),
    Column("message", "str"),
)

POLICIES_COLUMNS: tuple[Column, ...] = (
    Column("policy_id", "str", True),
    Column("version", "str", True, description="sha256 of the policy's canonical JSON"),
    Column("body", "json", True, description="the policy's keys as JSON"),
    Column("file_id", "str", True),
    Column("loaded_at", "ts", True),
)

GATE_RESULTS_COLUMNS: tuple[Column, ...] = (
    Column("file_id", "str", True),
    Column("kind", "str", True),
    Column("suite", "str", True),
    Column("success", "bool", True),
    Column("evaluated", "int"),
    Column("failed", "int"),
    Column("details", "json", description="failed expectations with observed values"),
    Column("docs_path", "str", description="Great Expectations Data Docs page"),
    Column("validated_at", "ts", True),
)

#: Per terminal per local day aggregates: ``features/daily.py`` computes them and
#: ``pipelines/detect/run.py`` upserts one row per terminal and run date into
#: ``terminal_day``, so 7- and 30-day features read compact aggregates, not raw
#: history. name -> logical type.
TERMINAL_DAY_AGGREGATES: dict[str, str] = {
    "n_txn": "int",
    "n_approved": "int",
    "n_cap": "int",
    "cap_amount": "int",
    "amount_mean": "float",
    "amount_std": "float",
    "amount_p50": "float",
    "amount_p90": "float",
    "amount_max": "int",
    "round_share": "float",
    "just_under_cap_share": "float",
    "n_just_under_cap": "int",
    "credit_share": "float",
    "night_share": "float",
    "outside_hours_share": "float",
    "n_cards": "int",
    "max_same_card": "int",
    "top5_card_share": "float",
    "n_same_card_bursts": "int",
    "decline_rate": "float",
    "decline_card_rate": "float",
    "decline_pin_rate": "float",
    "decline_funds_rate": "float",
    "decline_technical_rate": "float",
    "n_technical": "int",
    "n_technical_incidents": "int",
    "n_refund": "int",
    "refund_ratio": "float",
    "n_unmatched_refund": "int",
    "n_reversal": "int",
    "reversal_ratio": "float",
    "chip_share": "float",
    "contactless_share": "float",
    "qr_share": "float",
    "fallback_share": "float",
    "n_fallback": "int",
    "manual_share": "float",
    "n_mcc_mismatch": "int",
    "mcc_mismatch_share": "float",
    "n_mcc_switch": "int",
    "n_distinct_mcc": "int",
    "n_located": "int",
    "n_outside_geofence": "int",
    "distance_p50_km": "float",
    "distance_p95_km": "float",
    "distance_max_km": "float",
    "geofence_m": "float",
    "max_speed_kmh": "float",
    "n_impossible_hops": "int",
    "n_serials": "int",
    "n_ips": "int",
    "n_cells": "int",
    "n_serial_mismatch": "int",
    "n_serial_switch": "int",
    "n_serial_back_switch": "int",
    "n_ip_back_switch": "int",
    "n_cell_back_switch": "int",
    "n_stan_repeat": "int",
    "n_stan_conflict": "int",
    "n_stan_out_of_order": "int",
    "n_unregistered": "int",
    "n_over_txn_cap": "int",
    "n_over_daily_amount": "int",
    "n_over_daily_count": "int",
    "n_over_same_card": "int",
    "n_disallowed_card_type": "int",
    "n_disallowed_txn_type": "int",
    "n_disallowed_entry_mode": "int",
    "n_disallowed_entry_nonfallback": "int",
    "n_outside_hours": "int",
    "max_cards_window": "int",
    "testing_cards": "int",
    "testing_decline_rate": "float",
    "testing_median_amount": "float",
    "n_sequential_cards": "int",
    "n_implausible_time": "int",
}

TERMINAL_DAY_COLUMNS: tuple[Column, ...] = (
    Column("terminal_id", "str", True),
    Column("local_date", "date", True),
    Column("merchant_id", "str", description="registered merchant id"),
    Column("registered_mcc", "str"),
    Column("region_code", "str"),
    Column("terminal_kind", "str"),
    Column("policy_key", "str", description="policy applied (unknown -> default)"),
    *(Column(name, dtype) for name, dtype in TERMINAL_DAY_AGGREGATES.items()),
    Column("run_id", "str", description="the run that computed the row"),
)

#: Compact per-day tables that ``pipelines/detect/leakage.py`` keeps up to date, one day at a
#: time, so the cross-terminal detectors read history in aggregate, not row by row. They
#: are derived from ``transactions`` only (never from the config), so every run, backtests
#: included, may refresh them; a day is recomputed when its transaction count changes.
#: ``card_visit_days``: distinct cards per terminal and day by the day of their previous
#: visit, so distinct cards over any window ``[s, e]`` are the rows of that window whose
#: ``prev_date`` is before ``s`` (or null); rows with ``terminal_id = '*'`` count visits
#: at any terminal.
CARD_VISIT_DAYS_COLUMNS: tuple[Column, ...] = (
    Column("terminal_id", "str", True, description="terminal, or '*' for any terminal"),
    Column("local_date", "date", True),
    Column(
        "prev_date",
        "date",
        description="the cards' previous visit day (same terminal, or any for '*') within "
        "CARD_VISIT_HORIZON_DAYS before local_date; null when none",
    ),
    Column("n_cards", "int", True, description="distinct cards (tokens) with that prev_date"),
)
#: ``card_days``: the distinct (terminal, card, day) visits, plus one ``'*'`` row per card
#: and day, each by its 63-bit key only (the token is not kept: ~12M rows a day at 10M
#: transactions, and writing their 64-character tokens was most of the refresh's cost);
#: ``card_visit_days.prev_date`` of a new day is looked up here.
CARD_DAYS_COLUMNS: tuple[Column, ...] = (
    Column("terminal_id", "str", True, description="terminal, or '*' for any terminal"),
    Column("local_date", "date", True),
    Column(
        "pair_key",
        "int",
        True,
        description="63-bit hash of terminal_id and card_token: the look-up key",
    ),
)
#: How far back ``card_visit_days.prev_date`` looks; windows longer than this are
#: computed from raw transactions instead.
CARD_VISIT_HORIZON_DAYS = 366
#: ``terminal_day_sales``: transaction and sales counts per terminal and day.
TERMINAL_DAY_SALES_COLUMNS: tuple[Column, ...] = (
    Column("terminal_id", "str", True),
    Column("local_date", "date", True),
    Column("n_txn", "int", True, description="all transactions (detects days that changed)"),
    Column("n_sales", "int", True, description="transactions of the CAP_TXN_TYPES"),
    Column("sales_amount", "int", True, description="sum of their amount_minor"),
)

#: Table name -> (columns, primary key columns).
TABLES: dict[str, tuple[tuple[Column, ...], tuple[str, ...]]] = {
    "terminals": (stored_columns(TERMINALS), ("terminal_id", "updated_at")),
    "transactions": (stored_columns(TRANSACTIONS), ("txn_id",)),
    "terminal_events": (stored_columns(TERMINAL_EVENTS), ("event_id",)),
    "fraud_reports": (stored_columns(FRAUD_REPORTS), ("report_id",)),
    "policies": (POLICIES_COLUMNS, ("policy_id", "version")),
    "quarantine": (QUARANTINE_COLUMNS, ()),
    "ingest_manifest": (MANIFEST_COLUMNS, ()),
    "gate_results": (GATE_RESULTS_COLUMNS, ()),
    "runs": (RUNS_COLUMNS, ("run_id",)),
    "flags": (FLAGS_COLUMNS, ("flag_id",)),
    "dispositions": (DISPOSITIONS_COLUMNS, ()),
    "at_risk_cards": (AT_RISK_CARDS_COLUMNS, ()),
    "terminal_day": (TERMINAL_DAY_COLUMNS, ("terminal_id", "local_date")),
    "card_visit_days": (CARD_VISIT_DAYS_COLUMNS, ()),
    "card_days": (CARD_DAYS_COLUMNS, ()),
    "terminal_day_sales": (TERMINAL_DAY_SALES_COLUMNS, ("terminal_id", "local_date")),
}


#: Tables whose key is kept unique by ingest's de-duplication (inside the file and
#: against what is stored), not by a DuckDB PRIMARY KEY index: an ART index over
#: every transaction id ever loaded (hundreds of millions over a trial) must be
#: held in memory to check each insert, and made the write of a 10M-row day
#: about 40% slower (docs/ingest.md).
UNINDEXED_KEYS = frozenset({"transactions"})


def ddl(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` statement for a stored table.

    The key of :data:`TABLES` becomes the PRIMARY KEY, except for the tables in
    :data:`UNINDEXED_KEYS`.

    Examples
    --------
    >>> print(ddl("dispositions").splitlines()[0])
    CREATE TABLE IF NOT EXISTS dispositions (
    """
    cols, pk = TABLES[table]
    lines = [f"    {c.name} {c.duckdb_type}{' NOT NULL' if c.required else ''}" for c in cols]
    if pk and table not in UNINDEXED_KEYS:
        lines.append(f"    PRIMARY KEY ({', '.join(pk)})")
    return f"CREATE TABLE IF NOT EXISTS {table} (\n" + ",\n".join(lines) + "\n)"


def polars_schema(columns: tuple[Column, ...]) -> pl.Schema:
    """Polars schema of a column list (``json`` columns are strings)."""
    return pl.Schema({c.name: c.polars_type for c in columns})


# ---------------------------------------------------------------------------
# Detections: what every detector returns (one row per terminal x behaviour x
# day on which the behaviour was seen). The run step turns detections into
# flag episodes (``flags``).
# ---------------------------------------------------------------------------

REASON_STRUCT = pl.Struct(
    {"code": pl.String, "text": pl.String, "observed": pl.Float64, "threshold": pl.Float64}
)
DETECTION_SCHEMA = pl.Schema(
    {
        "terminal_id": pl.String(),
        "behaviour": pl.String(),
        "day": pl.Date(),
        "score": pl.Float64(),
        "reasons": pl.List(REASON_STRUCT),
        "evidence": pl.List(pl.String()),
    }
)
MAX_EVIDENCE = 50

#: Marker written in place of a card-number-like digit run found in free text.
PAN_REDACTION_MARKER = "[PAN-REDACTED]"
