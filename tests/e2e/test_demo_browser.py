"""The demo page in a real browser: Debian's chromium, headless, driven by playwright.

Never skipped: without /usr/bin/chromium (ops/test installs it on a root Debian machine)
the test fails and says so.
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.e2e.conftest import Stack
from tests.e2e.test_realtime import wait_for_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_a_typed_message_gets_an_ai_reply_on_the_demo_page(stack: Stack, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), (
        "Debian's chromium is missing: apt-get install -y chromium (ops/test does it as root)"
    )
    wait_for_port(int(stack.env["XENTREE_REALTIME_PORT"]))
    tenant, user = f"t-{secrets.token_hex(4)}", f"u-{secrets.token_hex(4)}"
    # Less than a minute of quota: the page shows the warning at once.
    stack.cli("plan", "assign", "--tenant", tenant, "--user", user, "--plan", "custom",
              "--seconds", "45")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 800})
            page.goto(f"{stack.url}/demo")
            page.fill("#tenant", tenant)
            page.fill("#user", user)
            page.click("#start")
            expect(page.locator("#status")).to_have_text("live", timeout=15_000)
            expect(page.locator("#remaining")).to_have_text(re.compile(r"^\d+:\d\d$"))
            page.fill("#message", "hello from the browser")
            page.press("#message", "Enter")

            user_line = page.locator('.line[data-role="user"][data-completed="true"] .text')
            expect(user_line).to_have_text("hello from the browser", timeout=15_000)
            ai_line = page.locator('.line[data-role="ai"][data-completed="true"] .text')
            expect(ai_line.first).not_to_be_empty(timeout=15_000)
            reply = ai_line.first.inner_text()
            assert "hello from the browser" in reply, reply
            seconds = int(page.locator("#remaining").get_attribute("data-seconds") or "-1")
            assert 0 < seconds <= 45
            expect(page.locator("#warning")).to_be_visible()
            expect(page.locator("#warning")).to_contain_text("Quota warning")
            # The quota counts down on the page (heartbeats every second on this stack).
            page.wait_for_function(
                f"Number(document.getElementById('remaining').dataset.seconds) < {seconds}",
                timeout=10_000,
            )
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

            page.click("#end")
            expect(page.locator(".line.notice").last).to_contain_text(
                "Session ended: client", timeout=15_000
            )
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 0
    print(f"screenshot: {tmp_path / 'demo.png'}")


def test_the_dev_token_endpoint_grants_a_live_integration_token(stack: Stack) -> None:
    r = stack.client.post("/api/dev/integration-token", json={"tenant": "t-dev", "user": "u-1"})
    assert r.status_code == 201, r.text
    issued = r.json()
    assert issued["token_type"] == "Bearer" and issued["expires_in"] > 0
    bad = stack.client.post("/api/dev/integration-token", json={"tenant": "a b", "user": "u"})
    assert bad.status_code in (400, 422), bad.text
    schema = stack.client.get("/schema/openapi.json").json()
    assert not any(path.startswith(("/demo", "/api/dev")) for path in schema["paths"])


def test_without_the_dev_issuer_there_is_no_demo_and_no_dev_endpoint() -> None:
    from litestar.testing import TestClient

    from adapters.http.app import create_app
    from application.settings import Settings

    class Offline:
        settings = Settings(dev_issuer=False)

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

        def check_database(self) -> None:
            pass

        def close(self) -> None:
            pass

    app = create_app(Settings(dev_issuer=False), services=Offline())  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/demo").status_code == 404
        r = client.post("/api/dev/integration-token", json={"tenant": "t", "user": "u"})
        assert r.status_code == 404
