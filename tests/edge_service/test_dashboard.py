"""The dashboard in a real headless Chromium: sign in, see the plan drawn over the layers, repartition from the form.

Uses Debian's chromium (`make test` installs it) through Playwright; the screenshots are kept in
`test-artifacts/` for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from splitcore.loading import LoadedModel
from tests.servers import edge_and_cloud

pytestmark = pytest.mark.e2e  # spawns processes, drives a browser or fuzzes: out of the fast loop (-m 'not e2e')

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_the_dashboard_draws_the_plan_and_repartitions_from_its_form(models: dict[str, LoadedModel]) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (apt-get install chromium): make test does"
    loaded = models["gpt2"]
    n = loaded.layered.num_layers
    ARTIFACTS.mkdir(exist_ok=True)
    with edge_and_cloud(loaded, cut="1:3", codec="int8", admin_token="dash-token", probe_interval_s=0.3) as tiers:
        url = tiers.edge_url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1150, "height": 1300})
                first = page.goto(f"{url}/admin/dashboard")
                assert first is not None and first.status == 401
                page.fill("#token", "not-the-token")
                page.click("#sign-in")
                expect(page.locator("#message")).to_contain_text("wrong", timeout=15_000)  # back at the form
                page.fill("#token", "dash-token")
                page.click("#sign-in")
                page.wait_for_url(f"{url}/admin/dashboard")
                drawing = page.locator("#plan-drawing")
                expect(drawing.locator("rect")).to_have_count(n + 2, timeout=15_000)  # embed, blocks, head
                expect(drawing.locator("rect[data-tier=cloud]")).to_have_count(2)  # blocks 1 and 2
                expect(drawing.locator("line[data-cut]")).to_have_count(2)
                expect(page.locator("#cost-bars rect").first).to_be_visible(timeout=30_000)
                expect(page.locator("#summary")).to_contain_text("edge [0, 1) -> cloud [1, 3)")
                expect(page.locator("#summary")).to_contain_text("batch: cloud 0 (of 0 sessions), edge 0")
                expect(page.locator("#cost-bars [data-axis='ms per decode step']")).to_have_count(1)
                expect(page.locator("#request-chart [data-axis='requests per 10 s']")).to_have_count(1)
                expect(page.locator("#request-chart [data-axis='minutes ago']")).to_have_count(1)
                expect(page.locator("#bandwidth-chart [data-axis='round trip, ms']")).to_have_count(1, timeout=15_000)
                expect(page.locator("#bandwidth-chart [data-axis='bandwidth, Mbit/s (log)']")).to_have_count(1)
                spec = page.locator("#speculation")
                expect(spec).to_contain_text("setting auto, draft: self")  # the defaults, on a test model
                expect(spec).to_contain_text("no speculative round yet")
                ids = loaded.tokenizer.encode("the dashboard counts rounds")
                httpx.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 12, "temperature": 0},
                           timeout=60).raise_for_status()
                expect(spec).to_contain_text("tokens per round trip", timeout=10_000)
                expect(spec).to_contain_text("acceptance by draft position")
                page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
                page.select_option("#speculate", "2")
                page.click("#set-speculate")
                expect(page.locator("#status")).to_contain_text("switched to speculate 2", timeout=15_000)
                expect(spec).to_contain_text("setting 2, draft: self", timeout=10_000)

                page.fill("#cut", "2:4")
                page.click("#apply-cut")
                expect(page.locator("#status")).to_contain_text("switched to", timeout=15_000)
                expect(drawing.locator("rect[data-tier=cloud]")).to_have_count(2)
                expect(page.locator("#summary")).to_contain_text("cloud [2, 4)", timeout=10_000)
                expect(page.locator("#changes tbody tr")).to_have_count(1)
                page.fill("#cut", "7:1")
                page.click("#apply-cut")
                expect(page.locator("#status")).to_contain_text("refused", timeout=15_000)
                page.screenshot(path=str(ARTIFACTS / "dashboard-after-repartition.png"), full_page=True)
                page.click("#sign-out button")
                page.wait_for_url(f"{url}/admin/login")
                assert page.goto(f"{url}/admin/dashboard").status == 401  # type: ignore[union-attr]
            finally:
                browser.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
