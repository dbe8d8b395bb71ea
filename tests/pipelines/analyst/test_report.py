"""The offline HTML report: content, escaping, no external resources (the browser test is separate)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipelines.analyst import report
from pipelines.settings import Settings
from pipelines.storage import connect

_spec = importlib.util.spec_from_file_location(
    "_analyst_store", Path(__file__).with_name("_analyst_store.py")
)
store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store)


class Page(HTMLParser):
    """Collects tags, ids, links and text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.data: dict[str, str] = {}
        self.text: list[str] = []
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._open and self._open[-1] in ("script", "style"):
            self.data[self._open[-1]] = data
        else:
            self.text.append(data)

    def find(self, tag: str, **attrs) -> list[dict]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    db = store.build_store(folder / "warehouse" / "t.duckdb")
    settings = Settings(db_path=db)
    (settings.data_docs_dir).mkdir(parents=True)
    (settings.data_docs_dir / "index.html").write_text("<html></html>")
    path = report.write_report(settings, store.AS_OF)
    return settings, path, path.read_text(encoding="utf-8")


def test_written_beside_the_database_by_default(built):
    settings, path, _ = built
    assert path == settings.reports_dir / "trialguard-report-2025-03-10.html"
    assert not list(path.parent.glob("*.tmp"))


def test_queue_lists_open_flags_by_severity_then_score(built):
    page = Page(built[2])
    rows = [a["data-flag-id"] for t, a in page.tags if t == "tr" and "data-flag-id" in a]
    assert rows == ["F-TLB-4", "F-REL-1", "F-CT-2"]
    assert [a["data-severity"] for t, a in page.tags if "data-severity" in a] == [
        "critical",
        "high",
        "medium",
    ]


def test_a_case_page_per_flagged_terminal_with_charts(built):
    page = Page(built[2])
    cases = [a["id"] for a in page.find("article")]
    assert cases == ["case-T0000004", "case-T0000001", "case-T0000002"]
    links = {a["href"] for a in page.find("a") if a.get("href", "").startswith("#case-")}
    assert links == {"#" + c for c in cases}
    case1 = built[2].split('id="case-T0000001"', 1)[1].split("</article>", 1)[0]
    for title in (
        "Daily volume",
        "Distance of reported locations",
        "Response codes",
        "Entry modes",
    ):
        assert title in case1
    assert case1.count("<svg") == 4
    assert "90 full magstripe" in case1 and "622202******1000" in case1
    assert "wang</b>: confirmed" in case1  # dispositions so far


def test_untrusted_text_is_escaped_and_only_our_script_runs(built):
    text = built[2]
    page = Page(text)
    assert len(page.find("script")) == 1
    assert not page.find("img")  # the reason's <img onerror=...> stayed text
    assert "<script>alert(1)" not in text and 'onerror="alert(2)"' not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    joined = "".join(page.text)
    assert store.EVIL_NAME in joined and store.EVIL_REASON in joined  # shown, as text


def test_works_offline_and_pins_its_inline_code(built):
    text = built[2]
    page = Page(text)
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            value = attrs.get(name) or ""
            assert not re.match(r"\s*(https?:|//|javascript:)", value, re.IGNORECASE), (tag, attrs)
    assert not re.search(r"url\(|@import|@font-face", page.data["style"])
    csp = page.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    assert "default-src 'none'" in csp
    for kind in ("style", "script"):
        digest = base64.b64encode(hashlib.sha256(page.data[kind].encode()).digest()).decode()
        assert f"{kind}-src 'sha256-{digest}'" in csp


def test_no_card_tokens_or_long_digit_runs(built):
    text = built[2]
    assert "tokT" not in text and "card_token" not in text
    assert not re.search(r"\d{13,19}", text.replace("848310054110", "M"))  # merchant ids aside
    assert set(re.findall(r"\d*\*{2,}\d*", text)) == {"622202******1000", "622202******1002"}


def test_summary_behaviours_verdicts_and_data_quality(built):
    settings, path, text = built
    summary = text.split('id="summary"', 1)[1].split("</section>", 1)[0]
    assert "run-1" in summary and "succeeded" in summary
    behaviours = text.split('id="behaviours"', 1)[1].split("</section>", 1)[0]
    assert behaviours.count("<tr>") == 1 + 13  # header + one row per behaviour code
    verdicts = text.split('id="verdicts"', 1)[1].split("</section>", 1)[0]
    assert "1 terminate, 3 extend, 1 pass" in verdicts
    dq = text.split('id="data-quality"', 1)[1].split("</section>", 1)[0]
    assert "header not recognised" in dq and "amount_minor &#x27;12.50&#x27;" in dq
    assert "&lt;b&gt;-5&lt;/b&gt;" in dq  # gate details escaped
    link = Page(dq).find("a", id="data-docs-link")[0]["href"]
    assert (path.parent / link).resolve() == (settings.data_docs_dir / "index.html").resolve()


def test_reuses_a_given_connection_and_explains_missing_docs(tmp_path):
    db = store.build_store(tmp_path / "t.duckdb")
    settings = Settings(db_path=db)
    con = connect(db)
    out = report.write_report(settings, store.AS_OF, tmp_path / "out" / "r.html", con=con)
    assert con.execute("SELECT count(*) FROM flags").fetchone() == (6,)  # still open
    text = out.read_text(encoding="utf-8")
    assert "Data Docs are not rendered yet" in text
    empty_day = report.write_report(settings, store.START, tmp_path / "r0.html", con=con)
    assert "No detection run recorded for 2025-03-01" in empty_day.read_text(encoding="utf-8")
    con.close()


def test_opens_even_while_this_process_holds_a_writable_connection(tmp_path):
    db = store.build_store(tmp_path / "t.duckdb")
    writer = connect(db)  # as a flow that detected and now writes the report
    try:
        out = report.write_report(Settings(db_path=db), store.AS_OF, tmp_path / "r.html")
        assert 'data-flag-id="F-TLB-4"' in out.read_text(encoding="utf-8")
    finally:
        writer.close()


def test_data_quality_falls_back_to_the_latest_files_when_replaying_an_old_night(tmp_path):
    db = store.build_store(tmp_path / "t.duckdb")
    old_night = store.START - timedelta(days=30)  # every file was loaded after it
    out = report.write_report(Settings(db_path=db), old_night, tmp_path / "r.html")
    dq = out.read_text(encoding="utf-8").split('id="data-quality"', 1)[1]
    assert "2 file(s), the latest loaded" in dq and "landing/txns.csv" in dq


def test_summary_shows_the_finished_detection_while_the_nightly_is_still_running(tmp_path):
    db = store.build_store(tmp_path / "t.duckdb")
    con = connect(db)
    # the nightly flow writes the report before its own runs row is closed
    con.execute(
        "INSERT INTO runs (run_id, command, as_of, started_at, status) "
        "VALUES ('nightly-9', 'nightly', ?, now()::TIMESTAMP + INTERVAL 1 DAY, 'running')",
        [store.AS_OF],
    )
    con.close()
    out = report.write_report(Settings(db_path=db), store.AS_OF, tmp_path / "r.html")
    summary = out.read_text(encoding="utf-8").split('id="summary"', 1)[1].split("</section>")[0]
    assert "run-1" in summary and "succeeded" in summary
    assert "nightly-9" not in summary
