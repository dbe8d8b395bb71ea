"""Card-number-like runs in free text (contract "Card numbers"): what is redacted and what not."""

from __future__ import annotations

import random

import polars as pl
import pytest

from features.redaction import (
    FREE_TEXT_MIN_DIGITS,
    luhn_valid,
    pan_candidate,
    redact_card_numbers,
)
from features.schema import IDENTIFIER_COLUMNS, INPUT_KINDS, PAN_REDACTION_MARKER

M = PAN_REDACTION_MARKER


def luhn_reference(digits: str) -> bool:
    """Obviously correct Luhn: double every second digit from the right, sum the digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d // 10 + d % 10
    return total % 10 == 0


def luhn_number(length: int, seed: int = 0, valid: bool = True) -> str:
    rng = random.Random(seed * 100 + length)
    body = "6" + "".join(rng.choice("0123456789") for _ in range(length - 2))
    checks = [body + c for c in "0123456789"]
    return next(c for c in checks if luhn_reference(c) == valid)


def group(number: str, sep: str, size: int = 4) -> str:
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


def test_luhn_matches_reference_on_random_digits():
    rng = random.Random(1)
    for _ in range(2000):
        s = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 20)))
        assert luhn_valid(s) == luhn_reference(s), s
    assert not luhn_valid("4111 1111 1111 1111") and not luhn_valid("")


@pytest.mark.parametrize("length", range(13, 20))
@pytest.mark.parametrize("sep", ["", " ", "-"], ids=["plain", "spaces", "dashes"])
def test_luhn_valid_13_to_19_digit_runs_are_redacted(length, sep):
    pan = luhn_number(length)
    text = f"card {group(pan, sep)} seen; again:{pan}."
    out, n = redact_card_numbers(text)
    assert (out, n) == (f"card {M} seen; again:{M}.", 2)


@pytest.mark.parametrize("length", range(13, 20))
def test_luhn_invalid_runs_are_left_alone(length):
    number = luhn_number(length, valid=False)
    text = f"ref {number} / {group(number, '-')}"
    assert redact_card_numbers(text) == (text, 0)


def test_short_and_long_runs_are_left_alone():
    pan12 = luhn_number(12)
    pan16 = luhn_number(16)
    longer = luhn_number(20)  # a 20-digit Luhn-valid run is not a card number
    embedded = "9" + pan16 + "9"  # a card number inside a longer digit run is not cut out
    text = f"a {pan12} b {longer} c {embedded} d"
    assert redact_card_numbers(text) == (text, 0)
    # quarantined raw rows use the shortest pan the contract allows (12 digits)
    assert redact_card_numbers(pan12, min_digits=12) == (M, 1)


def test_only_single_separators_group_a_run():
    pan = luhn_number(16)
    double = group(pan, "  ")
    mixed = group(pan, " - ")
    for text in (double, mixed):
        assert redact_card_numbers(text) == (text, 0)
    assert redact_card_numbers(group(pan, " ", 3)) == (M, 1)  # any group size


def test_luhn_valid_merchant_id_is_not_scanned_because_it_is_an_identifier():
    # a 15-digit merchant id that passes Luhn would be redacted in free text ...
    merchant_id = luhn_number(15, seed=3)
    assert redact_card_numbers(f"shop {merchant_id}") == (f"shop {M}", 1)
    # ... so identifier columns must never be free text (contract "Card numbers")
    for kind in INPUT_KINDS.values():
        free = {c.name for c in kind.columns if c.free_text}
        assert free.isdisjoint(IDENTIFIER_COLUMNS), kind.name
        assert "merchant_name" in free or kind.name != "terminals"
        for name in IDENTIFIER_COLUMNS:
            if name in kind.names:
                assert not kind.column(name).free_text


def test_counts_every_run_and_keeps_the_rest_of_the_text():
    a, b = luhn_number(16, 1), luhn_number(19, 2)
    text = f"上海 {a}\n{group(b, '-')} 第{luhn_number(16, 3, valid=False)}号"
    out, n = redact_card_numbers(text)
    assert n == 2 and out.startswith(f"上海 {M}\n{M} 第") and out.endswith("号")
    assert FREE_TEXT_MIN_DIGITS == 13


def test_pan_candidate_prefilter_selects_every_redacted_value():
    values = [
        f"x {luhn_number(16)}",
        group(luhn_number(13), "-"),
        "order 12345",
        None,
        f"{luhn_number(16, valid=False)}",
        "",
    ]
    got = pl.DataFrame({"detail": values}).lazy().select(pan_candidate("detail")).collect()
    flags = got["detail_pan_candidate"].to_list()
    assert flags == [True, True, False, False, True, False]
    for value, flag in zip(values, flags, strict=True):
        if value is not None and redact_card_numbers(value)[1]:
            assert flag  # the pre-filter never drops a value that needs redaction
