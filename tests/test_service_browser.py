"""The service's pages in a real browser: headless Chromium (Debian's `chromium`, which
`.ci/run` installs) driven over the DevTools protocol on a pipe, against `harness serve` on a
database written by real runs: two `harness run --suite smoke` at 1 rank, then the same
suite with qwen3_moe sharded by a broken strategy (`harness.faults`). Asserts on the
rendered DOM and computed styles, follows every link, and saves a screenshot of each page
under ci/artifacts/ (CI keeps that folder)."""

import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from harness.suites import suite_path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "ci" / "artifacts"
BROKEN = "harness.faults.corruption:perturb_layer_attention"
FAILING_RED = "rgb(207, 34, 46)"  # .st-fail in the pages' style sheet
PASSING_GREEN = "rgb(45, 164, 78)"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here: .ci/run installs Debian's chromium package"
)


class Browser:
    """One headless Chromium tab over --remote-debugging-pipe: the DevTools protocol as
    NUL-separated JSON on fds 3 (to the browser) and 4 (from it); no websocket, no driver."""

    def __init__(self, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def at_3_and_4():
            low = [os.dup(to_browser_r), os.dup(from_browser_w)]
            os.dup2(low[0], 3)
            os.dup2(low[1], 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"]
            + ["--no-first-run", "--disable-background-networking", "--disable-sync"]
            + ["--disable-component-update", "--hide-scrollbars", "--remote-debugging-pipe"]
            + [f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=at_3_and_4,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self._session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable")

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise AssertionError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        while self._read().get("method") != "Page.loadEventFired":
            pass

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        os.close(self._to_browser)
        os.close(self._from_browser)


def harness_run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--ranks", "1", "--repeats", "2", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory, start_service, stop, get):
    root = tmp_path_factory.mktemp("browser")
    db = root / "nightly.db"
    # A suite file of the user's (the smoke suite) run twice; then the file changes its
    # qwen3_moe case to a strategy that corrupts attention, and it runs once more.
    text = suite_path("smoke").read_text()
    suite = root / "smoke.toml"
    suite.write_text(text)
    for _ in range(2):
        done = harness_run(root, "--suite", suite.name, "--db", str(db))
        assert done.returncode == 0, done.stdout + done.stderr
    case = 'arch = "qwen3_moe"\nstrategy = "tp"'
    assert case in text
    suite.write_text(text.replace(case, f'arch = "qwen3_moe"\nstrategy = "{BROKEN}"', 1))
    done = harness_run(root, "--suite", suite.name, "--db", str(db))
    assert done.returncode == 1, done.stdout + done.stderr
    explored = _explore_run(root / "explore.db")
    proc, url = start_service("--db", str(db), "--db", str(explored))
    browser = Browser(root / "profile")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield {"url": url, "browser": browser, "db": db, "get": get}
    browser.close()
    stop(proc)


def _explore_run(path: Path) -> Path:
    """An explore run as `harness explore` stores it: examples and operations tried, and a
    failure with its shrunk scenario, what shrinking learned and its command."""
    from harness.case import Case
    from harness.explore import corpus
    from harness.explore.search import Found, Target
    from harness.explore.space import Example
    from harness.records import store
    from harness.records.result import CaseResult
    from harness.status import CaseStatus

    batch = {"kind": "batch", "prompts": [1, 1, 1], "prefill_step": 2048, "decode": 0}
    result = CaseResult(
        0, Case("qwen3_moe", scenario=batch), 2, CaseStatus.FAIL,
        reason="rank 0: row 2 of 3, prompt token 0 of 1 (prefill chunk 1 of 1)",
    )  # fmt: skip
    example = Example("fp32", batch)
    found = Found(
        Target("qwen3_moe", "tp", ("fp32",)), example, result, first_seen=example,
        learned=["only with batch >= 3"],
    )  # fmt: skip
    db = store.open_db(path)
    run_id = store.start_run(db, "explore", "qwen3_moe", 2, None, None, ["harness", "explore"])
    command = "harness run --arch qwen3_moe --ranks 2 --scenario '...'"
    store.record_explore(db, run_id, 42, 420, [corpus.failure_row(found, command, 10)])
    store.finish_run(db, run_id, "failed")
    return path


def visit(site, path: str, name: str) -> Browser:
    browser = site["browser"]
    browser.open(site["url"] + path.lstrip("/"))
    browser.screenshot(ARTIFACTS / f"{name}.png")
    return browser


def assert_links_resolve(site, browser: Browser) -> int:
    """Every link of the page that stays on the service answers 200."""
    hrefs = browser.js("[...document.querySelectorAll('a[href]')].map(a => a.href)")
    own = sorted({h.split("#")[0] for h in hrefs if h.startswith(site["url"])})
    for href in own:
        assert site["get"](href)[0] == 200, href
    return len(own)


FAILING_CELL = "document.querySelector('table.hud td.cell a[data-status=fail]')"


def test_hud_shows_the_failing_cell_in_red(site):
    browser = visit(site, "/", "hud")
    cell = browser.js(
        f"(() => {{ const a = {FAILING_CELL}; if (!a) return null;"
        " const r = a.getBoundingClientRect();"
        " return {row: a.closest('tr').dataset.row, title: a.title, href: a.href,"
        " colour: getComputedStyle(a).backgroundColor, w: r.width, h: r.height}; })()"
    )
    assert cell is not None, "no failing cell on the HUD"
    assert cell["row"] == "qwen3_moe" and cell["colour"] == FAILING_RED
    assert cell["w"] > 10 and cell["h"] > 10  # drawn, not hidden
    assert "fail" in cell["title"] and BROKEN in cell["title"]
    passing = browser.js(
        "[...document.querySelectorAll('table.hud td.cell a[data-status=pass]')]"
        ".map(a => getComputedStyle(a).backgroundColor)"
    )
    assert len(passing) == 4 and set(passing) == {PASSING_GREEN}
    strip = browser.js(
        "[...document.querySelector('tr[data-row=qwen3_moe] td.strip')"
        ".querySelectorAll('a')].map(a => getComputedStyle(a).backgroundColor)"
    )
    assert strip == [PASSING_GREEN, PASSING_GREEN, FAILING_RED]
    assert "new failure" in browser.js("document.querySelector('tr[data-row=qwen3_moe]').innerText")
    assert assert_links_resolve(site, browser) >= 8


def test_the_failing_cell_leads_to_its_case_page(site):
    browser = visit(site, "/", "hud")
    href = browser.js(f"{FAILING_CELL}.href")
    browser = visit(site, urllib.parse.urlsplit(href).path, "case")
    assert browser.js("document.querySelectorAll('svg.harness-chart').length") == 2
    marks = browser.js(
        "[...document.querySelectorAll('path.failing-mark')].map(p => getComputedStyle(p).stroke)"
    )
    assert marks and set(marks) == {FAILING_RED}
    series = browser.js(
        "[...document.querySelectorAll('polyline.series')].map(p => getComputedStyle(p).stroke)"
    )
    assert series and FAILING_RED not in series
    text = browser.js("document.body.innerText")
    assert "Last failure: run 3" in text and "Runs, newest first" in text
    first_run = browser.js(
        "document.querySelector('table.rows-and-columns:last-of-type td a').innerText"
    )
    assert first_run == "3"
    assert assert_links_resolve(site, browser) >= 3


def test_run_page_and_compare_page(site):
    browser = visit(site, "/-/run/nightly/3", "run")
    statuses = browser.js(
        "[...document.querySelectorAll('tr[data-case] [data-status]')].map(s => s.dataset.status)"
    )
    assert sorted(statuses) == ["fail", "pass", "pass", "pass", "pass"]
    assert assert_links_resolve(site, browser) >= 5
    browser = visit(site, "/-/compare/nightly?suite=smoke.toml", "compare")
    assert browser.js("document.getElementById('verdict').innerText") == "regressed"
    whats = browser.js("[...document.querySelectorAll('tr[data-what]')].map(r => r.dataset.what)")
    # the broken strategy is another case (strategy is part of the match): added, failing;
    # the tp case it replaced is removed
    assert "added" in whats and "removed" in whats
    assert assert_links_resolve(site, browser) >= 2


def test_an_explore_run_page_shows_its_examples_and_each_shrunk_failure(site):
    browser = visit(site, "/-/run/explore/1", "explore-run")
    heading = browser.js("[...document.querySelectorAll('h2')].map(h => h.innerText)")
    assert "Explore: 42 examples, 420 operations, 1 failure(s)" in heading, heading
    row = browser.js(
        "[...document.querySelectorAll('table.explore-failures tbody td')].map(t => t.innerText)"
    )
    assert row[:3] == ["qwen3_moe/tp/fp32", "fp32", "fail"], row
    assert "only with batch >= 3" in row and any("harness run --arch qwen3_moe" in c for c in row)
    color = browser.js(
        "getComputedStyle(document.querySelector('.explore-failures [data-status=fail]'))"
        ".backgroundColor"
    )
    assert color == FAILING_RED
    # Its examples are its cases: none stored here, so no empty table of cases.
    assert browser.js("document.querySelectorAll('tr[data-case]').length") == 0
    assert browser.js("document.querySelectorAll('table').length") == 1
    assert assert_links_resolve(site, browser) >= 1
