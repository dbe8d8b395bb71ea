"""The streaming CSV scan of ``sniff``: chunk boundaries never change what it finds."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ingest.readers import _Scan

# bytes that matter to the scan: quotes, line ends, and a 2-byte and a 3-byte
# UTF-8 character (é, 中) so that characters get split across chunks
_PIECES = [b"a", b",", b'"', b"\n", b"\r", "é".encode(), "中".encode(), b"\xff"]


def _reference(data: bytes) -> tuple[bool, bool, bool]:
    """Obviously correct: look at the whole stream at once."""
    try:
        data.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    return b'"' in data, b"\n\n" in data or b"\n\r\n" in data, utf8


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_scan_in_chunks_equals_scan_of_the_whole_stream(pieces, cuts):
    data = b"".join(pieces)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    scan = _Scan()
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            scan.feed(data[lo:hi])
    scan.finish()
    assert (scan.quote, scan.blank, scan.utf8_ok) == _reference(data)


def test_a_blank_line_split_over_three_chunks_is_found():
    scan = _Scan()
    for chunk in (b"a,b\n", b"\r", b"\n1,2\n"):
        scan.feed(chunk)
    assert scan.blank


def test_a_character_split_after_an_ascii_chunk_is_still_checked():
    scan = _Scan()
    e = "中".encode()
    for chunk in (b"a,b\n", e[:1], b"x"):  # a lead byte followed by ASCII: invalid
        scan.feed(chunk)
    scan.finish()
    assert not scan.utf8_ok
