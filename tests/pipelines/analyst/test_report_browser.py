"""The HTML report in headless Chromium, driven over the DevTools protocol.

Checks: the page loads with no console error, no exception, no blocked or external
request and no dialog (an escaped ``<script>alert(1)</script>`` merchant name must
not run); the queue lists the expected flags; following a queue link opens that
terminal's case page and hides the overview.

Needs Debian's ``chromium`` (``make chromium`` installs it). The test is skipped,
with the reason, only when no Chromium binary exists.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.analyst import report
from pipelines.settings import Settings

_spec = importlib.util.spec_from_file_location(
    "_analyst_store", Path(__file__).with_name("_analyst_store.py")
)
store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store)

CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if p and Path(p).exists()
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary: run `make chromium` (apt-get install chromium) to enable this test",
)
#: A guard against a hung browser, not a performance assertion.
HANG_GUARD_S = 60


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=HANG_GUARD_S)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=HANG_GUARD_S))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str):
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            msg = json.loads(self.ws.recv(timeout=HANG_GUARD_S))
            if msg.get("method") == method:
                return msg
            self.events.append(msg)

    def js(self, expression: str):
        res = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self):
        self.ws.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + HANG_GUARD_S
    while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(
                f"Chromium did not start (exit code {proc.poll()}); try `{CHROMIUM} --version`"
            )
        time.sleep(0.05)
    port = int(port_file.read_text().splitlines()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=HANG_GUARD_S) as r:
        pages = [t for t in json.load(r) if t["type"] == "page"]
    tools = DevTools(pages[0]["webSocketDebuggerUrl"])
    try:
        yield tools
    finally:
        tools.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def loaded(browser, tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-report")
    db = store.build_store(folder / "t.duckdb")
    path = report.write_report(Settings(db_path=db), store.AS_OF, folder / "report.html")
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.call(f"{domain}.enable")
    browser.events.clear()
    browser.call("Page.navigate", url=path.as_uri())
    browser.wait_for("Page.loadEventFired")
    return browser, path


def _problems(events: list[dict]) -> list[dict]:
    bad = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if (
            m == "Runtime.exceptionThrown"
            or m == "Page.javascriptDialogOpening"
            or m == "Runtime.consoleAPICalled"
            and p.get("type") in ("error", "assert", "warning")
        ):
            bad.append(ev)
        elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            bad.append(ev)  # CSP violations and failed loads are reported here
        elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(
            ("file:", "data:")
        ):
            bad.append(ev)
    return bad


def test_page_loads_offline_without_console_errors(loaded):
    tools, path = loaded
    assert tools.js("document.title") == "TrialGuard report 2025-03-10"
    assert tools.js("document.readyState") == "complete"
    tools.js("new Promise(r => setTimeout(r, 100))")  # let late console messages arrive
    assert _problems(tools.events) == []
    requests = [
        e["params"]["request"]["url"]
        for e in tools.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requests == [path.as_uri()]


def test_queue_lists_the_expected_flags_and_untrusted_text_is_inert(loaded):
    tools, _ = loaded
    flags = tools.js(
        "Array.from(document.querySelectorAll('#queue-table tbody tr'))"
        ".filter(r => r.offsetParent !== null).map(r => r.dataset.flagId)"
    )
    assert flags == ["F-TLB-4", "F-REL-1", "F-CT-2"]
    assert tools.js("document.scripts.length") == 1
    assert tools.js("document.querySelectorAll('img').length") == 0
    assert store.EVIL_NAME in tools.js("document.querySelector('#queue-table').textContent")
    # the filter box narrows the queue
    shown = tools.js(
        "(() => { const b = document.getElementById('queue-filter'); b.value = 'noodle';"
        " b.dispatchEvent(new Event('input'));"
        " const v = Array.from(document.querySelectorAll('#queue-table tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.dataset.flagId);"
        " b.value = ''; b.dispatchEvent(new Event('input')); return v; })()"
    )
    assert shown == ["F-CT-2"]


def test_a_case_page_opens_from_the_queue(loaded):
    tools, _ = loaded
    assert tools.js("getComputedStyle(document.getElementById('case-T0000001')).display") == "none"
    tools.js("document.querySelector('#queue-table a[href=\"#case-T0000001\"]').click()")
    tools.js("new Promise(r => requestAnimationFrame(() => setTimeout(r, 50)))")
    state = tools.js(
        "(() => { const c = document.getElementById('case-T0000001'); return {"
        " hash: location.hash, active: document.body.dataset.activeCase,"
        " shown: getComputedStyle(c).display,"
        " others: Array.from(document.querySelectorAll('article.case'))"
        ".filter(a => a !== c && getComputedStyle(a).display !== 'none').length,"
        " overview: getComputedStyle(document.querySelector('.overview')).display,"
        " charts: c.querySelectorAll('svg').length, height: c.getBoundingClientRect().height,"
        " text: c.innerText }; })()"
    )
    assert state["hash"] == "#case-T0000001" and state["active"] == "case-T0000001"
    assert state["shown"] == "block" and state["others"] == 0 and state["overview"] == "none"
    assert state["charts"] == 4 and state["height"] > 300
    assert "F-REL-1" in state["text"] and "622202******1000" in state["text"]
    # back to the queue
    tools.js("document.querySelector('#case-T0000001 a.back').click()")
    tools.js("new Promise(r => setTimeout(r, 50))")
    assert tools.js("getComputedStyle(document.querySelector('.overview')).display") == "block"
    assert _problems(tools.events) == []
