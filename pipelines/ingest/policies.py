"""Trial policy files (TOML): parsing, checking every key and value against the contract, versioning by content, and the default policy."""

from __future__ import annotations

import hashlib
import json
import tomllib
from datetime import datetime
from typing import Any

import duckdb

from features.schema import (
    CARD_TYPES,
    ENTRY_MODES,
    POLICIES_KIND,
    POLICY_KEYS,
    TERMINAL_KINDS,
    TXN_TYPES,
)
from pipelines.ingest.readers import (
    FileInfo,
    UnreadableFile,
)
from pipelines.ingest.results import FileResult
from pipelines.ingest.stage import _count
from pipelines.settings import PROJECT_ROOT

DEFAULT_POLICIES_FILE = PROJECT_ROOT / "pipelines" / "default_policies.toml"


def _check_policy_value(pid: str, key: str, value: Any) -> str | None:
    expected = POLICY_KEYS[key]
    where = f"policy {pid!r} key {key!r}"
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{where} must be a whole number >= 0, got {value!r}"
        return None
    if expected == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{where} must be a list of strings, got {value!r}"
        allowed = {
            "allowed_card_types": CARD_TYPES,
            "allowed_txn_types": TXN_TYPES,
            "allowed_entry_modes": tuple(ENTRY_MODES),
        }.get(key)
        if allowed is not None:
            bad = [v for v in value if v not in allowed]
            if bad:
                return f"{where} has unknown code(s) {bad}; expected some of {list(allowed)}"
        if key == "business_hours":
            ok = len(value) == 2 and all(
                len(v) == 5
                and v[2] == ":"
                and v[:2].isdigit()
                and v[3:].isdigit()
                and int(v[:2]) < 24
                and int(v[3:]) < 60
                for v in value
            )
            if not ok:
                return f'{where} must be two times ["HH:MM", "HH:MM"], got {value!r}'
        return None
    if expected == "dict[str,int]":
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()
        ):
            return f"{where} must be a table of whole numbers >= 0, got {value!r}"
        bad = [k for k in value if k not in TERMINAL_KINDS]
        if bad:
            return f"{where} has unknown terminal kind(s) {bad}; expected {list(TERMINAL_KINDS)}"
        return None
    return None  # pragma: no cover - POLICY_KEYS only uses the types above


def parse_policies(text: str, name: str = "policies") -> dict[str, dict[str, Any]]:
    """Policies of a TOML text, checked against :data:`features.schema.POLICY_KEYS`.

    Raises
    ------
    UnreadableFile
        Not TOML, no ``[policies.<id>]`` table, an unknown key or a wrong type;
        the message names the policy and the key.

    Examples
    --------
    >>> parse_policies('[policies.p1]\\nmax_daily_txn_count = 50')
    {'p1': {'max_daily_txn_count': 50}}
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UnreadableFile(f"{name} is not valid TOML: {exc}") from None
    unknown_top = [k for k in doc if k != "policies"]
    policies = doc.get("policies")
    if not isinstance(policies, dict) or not policies or unknown_top:
        raise UnreadableFile(
            f"{name} must hold only [policies.<policy_id>] tables"
            + (f"; found top-level key(s) {unknown_top}" if unknown_top else "")
        )
    out: dict[str, dict[str, Any]] = {}
    for pid, body in policies.items():
        if not isinstance(body, dict):
            raise UnreadableFile(f"{name}: policies.{pid} must be a table of keys")
        for key, value in body.items():
            if key not in POLICY_KEYS:
                raise UnreadableFile(
                    f"{name}: policy {pid!r} has unknown key {key!r}; "
                    f"allowed keys are {', '.join(POLICY_KEYS)}"
                )
            problem = _check_policy_value(pid, key, value)
            if problem:
                raise UnreadableFile(f"{name}: {problem}")
        out[pid] = body
    return out


def policy_version(body: dict[str, Any]) -> str:
    """sha256 of the policy's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _load_policy_file(con: duckdb.DuckDBPyConnection, info: FileInfo, result: FileResult) -> None:
    try:
        text = info.path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{info.path.name} is not UTF-8 text; TOML must be UTF-8") from None
    policies = parse_policies(text, info.path.name)
    result.kind = POLICIES_KIND
    now = datetime.now()
    for pid, body in policies.items():
        version = policy_version(body)
        result.rows_read += 1
        if _count(
            con,
            "SELECT count(*) FROM policies WHERE policy_id = ? AND version = ?",
            [pid, version],
        ):
            result.duplicates += 1
            continue
        con.execute(
            "INSERT INTO policies VALUES (?, ?, ?, ?, ?)",
            [pid, version, json.dumps(body, sort_keys=True), info.file_id, now],
        )
        result.accepted += 1
