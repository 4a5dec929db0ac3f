"""The dashboards in a real headless Chromium (Debian's, driven by Playwright), against a real
service (API + worker, embedded mode) that has audited a reference network: sign in, see the
audit live in the list, open it, see its figures, compare, approve. Screenshots are kept under
out/test-artifacts/dashboard/."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.worker.test_tasks import Service, _service, _upload

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTEFACTS = Path(__file__).resolve().parents[3] / "out" / "test-artifacts" / "dashboard"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium missing")


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Service, dict[str, str], str]]:
    svc = _service(tmp_path_factory.mktemp("dashboard"), "embedded")
    svc.cli("migrate")
    svc.start("api", "serve", "--port", str(svc.port))
    try:
        svc.wait_ready()
        tokens = {
            "alice": svc.cli("admin", "create-user", "alice", "--role", "submitter"),
            "ada": svc.cli("admin", "create-user", "ada", "--role", "auditor"),
        }
        model_id = _upload(svc, tokens["alice"])
        audit_id = httpx.post(
            f"{svc.url}/api/v1/audits",
            headers={"Authorization": f"Bearer {tokens['alice']}"},
            json={"model_id": model_id},
        ).json()["id"]
        yield svc, tokens, audit_id
    finally:
        svc.stop()


def test_sign_in_follow_an_audit_and_see_its_figures(
    audited: tuple[Service, dict[str, str], str],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    svc, tokens, audit_id = audited
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(f"{svc.url}/ui/audits")
        expect(page).to_have_url(f"{svc.url}/ui/login")
        page.fill("#token", "ra_wrong")
        page.click("#sign-in")
        expect(page.locator("#login-error")).to_have_text("invalid token")
        page.fill("#token", tokens["ada"])
        page.click("#sign-in")
        expect(page).to_have_url(f"{svc.url}/ui/audits")
        row = page.locator(f"#audit-{audit_id}")
        expect(row).to_be_visible()
        page.screenshot(path=str(ARTEFACTS / "audits-running.png"), full_page=True)
        # htmx refreshes the list until the audit has finished, without a reload
        expect(row.locator(".badge.succeeded")).to_be_visible(timeout=300_000)
        page.screenshot(path=str(ARTEFACTS / "audits-done.png"), full_page=True)
        row.locator("a").first.click()
        expect(page.locator("#audit-status")).to_have_text("succeeded")
        expect(page.locator("#verdicts")).to_contain_text("perturbation")
        images = page.locator("#figures img")
        assert images.count() >= 3
        for i in range(images.count()):
            images.nth(i).scroll_into_view_if_needed()
            width = images.nth(i).evaluate("img => img.complete ? img.naturalWidth : 0")
            assert width > 0, f"figure {i} did not load"
        page.screenshot(path=str(ARTEFACTS / "audit.png"), full_page=True)
        # the auditor's sign-off: a wrong token is refused, the own token signs
        page.fill("#approve-token", tokens["alice"])
        page.click("#approve")
        expect(page.locator("#error")).to_contain_text("not yours")
        page.fill("#approve-token", tokens["ada"])
        page.fill("#approve-comment", "reviewed in the dashboard")
        page.click("#approve")
        expect(page.locator("#message")).to_contain_text("approved")
        expect(page.locator("#approval")).to_contain_text("ada")
        page.screenshot(path=str(ARTEFACTS / "approved.png"), full_page=True)
        page.goto(f"{svc.url}/ui/compare?a={audit_id}&b={audit_id}")
        expect(page.locator("#comparison")).to_contain_text("perturbation")
        page.screenshot(path=str(ARTEFACTS / "compare.png"), full_page=True)
        browser.close()
    headers = {"Authorization": f"Bearer {tokens['ada']}"}
    pdf = httpx.get(f"{svc.url}/api/v1/audits/{audit_id}/report.pdf", headers=headers).content
    verdict = httpx.post(
        f"{svc.url}/api/v1/verify", headers=headers, files={"file": ("c.pdf", pdf)}, timeout=60
    ).json()
    assert verdict["valid"], verdict
    assert [s["meaning"] for s in verdict["signatures"]] == ["issued", "approved"]
    # the dashboard's download is the same approved certificate, and it is logged
    with httpx.Client(base_url=svc.url) as ui:
        ui.post("/ui/login", data={"token": tokens["ada"]})
        assert ui.get(f"/ui/audits/{audit_id}/files/report.pdf").content == pdf
    database = Path(svc.env["RECON_AUDIT_DATA_DIR"]) / "recon-audit.db"
    with sqlite3.connect(database) as connection:
        downloads = connection.execute(
            "SELECT count(*) FROM audit_events WHERE action = 'audit.downloaded'"
        ).fetchone()
    assert downloads == (2,)  # the API's and the dashboard's
    assert '"valid": true' in svc.cli("admin", "verify-events")


def test_pages_read_without_javascript(audited: tuple[Service, dict[str, str], str]) -> None:
    svc, tokens, audit_id = audited
    with httpx.Client(base_url=svc.url, follow_redirects=True) as client:
        signed_in = client.post("/ui/login", data={"token": tokens["alice"]})
        assert "Audits" in signed_in.text
        assert audit_id[:8] in client.get("/ui/audits").text
        models = client.get("/ui/models")
        assert "automap-mri-32" in models.text
        other = httpx.Client(base_url=svc.url, follow_redirects=True)
        assert other.get("/ui/audits").url.path == "/ui/login"
        other.close()
