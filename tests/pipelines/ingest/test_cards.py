"""Card tokens (Python reference vs the DuckDB SQL), PAN masking and safe messages."""

from __future__ import annotations

import hashlib
import hmac
import random
import re

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.redaction import luhn_valid
from features.schema import PAN_REDACTION_MARKER
from pipelines.ingest.cards import (
    card_token,
    hmac_pads,
    mask_pan,
    mask_pan_sql,
    redact_raw_row,
    safe_message,
    token_sql,
)

KEY = b"test-key-0123456789abcdef0123456789abcdef"


def random_pans(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(rng.choice("0123456789") for _ in range(rng.randint(12, 19))) for _ in range(n)
    ]


def luhn_pan(body: str) -> str:
    return next(body + c for c in "0123456789" if luhn_valid(body + c))


def sql_tokens(key: bytes, pans: list[str]) -> list[str]:
    ipad, opad = hmac_pads(key)
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE p (i INTEGER, pan VARCHAR)")
        con.executemany("INSERT INTO p VALUES (?, ?)", list(enumerate(pans)))
        rows = con.execute(
            f"SELECT {token_sql('pan')} FROM p ORDER BY i", {"ipad": ipad, "opad": opad}
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def test_card_token_is_hmac_sha256_hex():
    pan = "6222021234567890123"
    assert card_token(KEY, pan) == hmac.new(KEY, pan.encode(), hashlib.sha256).hexdigest()
    # RFC 4231 test case 2: the reference is HMAC-SHA256, not a plain keyed hash
    assert card_token(b"Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert card_token(KEY, pan) != card_token(KEY + b"x", pan)


@pytest.mark.parametrize(
    "key",
    [KEY, b"k" * 16, b"\x00\xff" * 32, bytes(range(65)), b"a-very-long-key/" * 9],
    ids=["40-bytes", "16-bytes", "block-size", "block-plus-one", "144-bytes"],
)
def test_sql_token_equals_python_on_random_pans(key):
    pans = random_pans(200, seed=len(key))
    assert sql_tokens(key, pans) == [card_token(key, p) for p in pans]


def test_sql_token_long_key_rfc4231_vector():
    # RFC 4231 test case 6: a key longer than the block is hashed first
    key = b"\xaa" * 131
    msg = "Test Using Larger Than Block-Size Key - Hash Key First"
    expected = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    assert sql_tokens(key, [msg]) == [expected]


def test_pads_never_contain_the_key():
    ipad, opad = hmac_pads(KEY)
    assert len(ipad) == len(opad) == 64
    assert KEY not in ipad and KEY not in opad


@pytest.mark.parametrize("length", range(20))
def test_mask_pan_keeps_bin_and_last4_only(length):
    value = "".join(str((7 * i + 3) % 10) for i in range(length))
    masked = mask_pan(value)
    assert len(masked) == length
    if length >= 12:
        assert masked[:6] == value[:6] and masked[-4:] == value[-4:]
        assert set(masked[6:-4]) <= {"*"}
    else:
        assert set(masked) <= {"*"}
    con = duckdb.connect()
    try:
        got = con.execute(f"SELECT {mask_pan_sql('$v')}", {"v": value}).fetchone()[0]
        assert got == masked
        assert con.execute(f"SELECT {mask_pan_sql('CAST(NULL AS VARCHAR)')}").fetchone()[0] is None
    finally:
        con.close()


def test_redact_raw_row_masks_luhn_runs_from_12_digits():
    pan12 = luhn_pan("62220212345")
    pan19 = luhn_pan("622202123456789012")
    not_luhn = "123456789012345"
    assert not luhn_valid(not_luhn)
    text = f'{{"note": "{pan12}", "other": "x{pan19}y", "rrn": "{not_luhn}"}}'
    out = redact_raw_row(text)
    assert pan12 not in out and pan19 not in out
    assert out.count(PAN_REDACTION_MARKER) == 2
    assert not_luhn in out


def _grouped(pan: str, seps: list[str]) -> str:
    out = pan[0]
    for i, ch in enumerate(pan[1:]):
        out += seps[i % len(seps)] + ch
    return out


@settings(max_examples=150, deadline=None)
@given(
    pan=st.text("0123456789", min_size=12, max_size=19),
    seps=st.lists(st.sampled_from(["", "", "", " ", "-"]), min_size=1, max_size=18),
    before=st.text("abcxyz:=,;()'\" \n", max_size=20),
    after=st.text("abcxyz:=,;()'\" \n", max_size=20),
    lines=st.integers(1, 3),
)
def test_safe_message_never_leaks_a_pan(pan, seps, before, after, lines):
    message = f"{before}{_grouped(pan, seps)}{after}"
    for text in (message, f"Error on line 3\n{message}", f"{message}\nOriginal Line: {pan}"):
        out = safe_message(text, max_lines=lines)
        assert "\n" not in out
        assert pan not in re.sub(r"[ -]", "", out)


def test_safe_message_keeps_the_first_line_and_short_numbers():
    msg = "CSV Error on Line: 3\nOriginal Line: T1,4111111111111111,12.50"
    assert safe_message(msg) == "CSV Error on Line: 3"
    assert safe_message("amount 12345678901 too large") == "amount 12345678901 too large"
    assert safe_message("x 4111-1111-1111-1112 y") == f"x {PAN_REDACTION_MARKER} y"
