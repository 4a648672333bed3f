"""The audit viewer in a real headless Chromium, against the example shop with real traffic.

The shop runs over uvicorn (and Flask through werkzeug) on 127.0.0.1; a browser logs in
through the shop's own login form and uses the viewer as a person would: filters, links,
the keyboard. Chromium is Debian's (``apt-get install chromium``; ``.ci/run`` installs it),
driven by Playwright's sync API; Playwright never downloads a browser of its own here.

With ``AUDIT_MW_SCREENSHOTS=docs/img`` set, the tests save the screenshots the docs show.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from audit_mw_examples.shop import DEMO_USERS
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    sync_playwright,
)

from audit_mw.integrity import generate_hmac_key, generate_signing_key, seal, verify
from tests._shop import BOB_IP, run_story
from tests.test_examples import flask_url, shop_dsn, starlette_url

__all__ = ["flask_url", "shop_dsn", "starlette_url"]  # fixtures, used by name

pytestmark = [pytest.mark.db, pytest.mark.slow]

ALICE, BOB, CAROL = DEMO_USERS
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCRIPT_PAYLOAD = "<script>window.__pwned = 'script'</script>"
IMG_PAYLOAD = "<img src=x onerror=\"window.__pwned = 'img'; alert('img')\">"
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """Save ``docs/img/viewer-NAME.png`` when AUDIT_MW_SCREENSHOTS names the folder."""
    folder = os.environ.get("AUDIT_MW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"viewer-{name}.png"), full_page=full_page)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Not a skip: without the browser these tests cannot say anything, so they fail.
    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Watch:
    """What a page did that it must not: dialogs, console errors, requests for ``x``."""

    def __init__(self, context: BrowserContext) -> None:
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self.requests: list[str] = []
        context.on("page", self.attach)
        context.on("request", lambda request: self.requests.append(request.url))

    def attach(self, page: Page) -> None:
        def on_dialog(dialog: Dialog) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        def on_console(message: ConsoleMessage) -> None:
            self.console.append(message.text)

        page.on("dialog", on_dialog)
        page.on("console", on_console)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport=LAPTOP)
    try:
        yield opened
    finally:
        opened.close()


def log_in_with_the_form(context: BrowserContext, base: str, user: Any) -> Page:
    page = context.new_page()
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(user.password)
    page.get_by_role("button", name="Log in").click()
    return page


def rows(page: Page) -> list[dict[str, str]]:
    """The events table as cells by column header."""
    headers = page.locator("table.events thead th").all_inner_texts()
    found = []
    for row in page.locator("table.events tbody tr").all():
        cells = row.locator("td").all_inner_texts()
        if len(cells) == len(headers):
            found.append(dict(zip(headers, cells, strict=True)))
    return found


def test_filters_narrow_the_table_and_the_url_round_trips(
    browser: Browser, context: BrowserContext, starlette_url: str
) -> None:
    story = run_story(starlette_url)
    page = log_in_with_the_form(context, starlette_url, ALICE)
    page.wait_for_url(f"{starlette_url}/audit/ui/")
    everything = rows(page)
    assert len(everything) >= 10
    screenshot(page, "events")

    # The keyboard: the first Tab reaches the skip link, then the navigation.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the content"

    page.get_by_label("User").fill(story["bob"])
    page.get_by_label("Kind").select_option("data")
    page.get_by_label("User").press("Enter")  # submits the form, as a keyboard user would
    page.wait_for_url(re.compile(r"user_id="))
    narrowed = rows(page)
    assert 0 < len(narrowed) < len(everything)
    assert {row["User"] for row in narrowed} == {story["bob"]}
    assert {row["Kind"] for row in narrowed} == {"data"}
    assert [row["Action"] for row in narrowed] == ["UPDATE", "UPDATE", "INSERT"]
    summary = page.get_by_role("status").inner_text()
    assert summary.startswith(f"{len(narrowed)} matching events")
    assert "user_id=user%3A" in page.url
    assert "kind=data" in page.url

    # The link, pasted into a ticket and opened elsewhere, shows the same.
    pasted = context.new_page()
    pasted.goto(page.url)
    assert pasted.get_by_label("User").input_value() == story["bob"]
    assert pasted.get_by_label("Kind").input_value() == "data"
    assert rows(pasted) == narrowed
    screenshot(pasted, "events-filtered")

    # Cursor paging: one event per page, and the next page is the next event.
    paged = context.new_page()
    assert "limit=50" in page.url  # the form sends its page size too
    paged.goto(page.url.replace("limit=50", "limit=1"))
    first = rows(paged)
    paged.get_by_role("link", name="Next page").click()
    second = rows(paged)
    assert "cursor=" in paged.url
    assert [first[0]["Id"], second[0]["Id"]] == [narrowed[0]["Id"], narrowed[1]["Id"]]

    phone = browser.new_context(viewport=PHONE, is_mobile=True)
    try:
        small = phone.new_page()
        small.goto(f"{starlette_url}/login")
        small.get_by_label("Email").fill(ALICE.email)
        small.get_by_label("Password").fill(ALICE.password)
        small.get_by_role("button", name="Log in").click()
        small.wait_for_url(f"{starlette_url}/audit/ui/")
        # Readable on a phone: the page itself does not scroll sideways (the table may).
        assert small.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(small, "events-phone")
    finally:
        phone.close()


def test_record_history_highlights_the_changed_fields(
    context: BrowserContext, starlette_url: str
) -> None:
    story = run_story(starlette_url)
    order = str(story["order_id"])
    page = log_in_with_the_form(context, starlette_url, ALICE)
    page.wait_for_url(f"{starlette_url}/audit/ui/")
    page.get_by_role("link", name=f"orders {order}", exact=True).first.click()
    page.wait_for_url(re.compile(rf"/audit/ui/records/orders/{order}$"))
    steps = page.locator("section.step")
    assert steps.count() == 3  # created, quantity changed, cancelled: oldest first
    assert [h.split(" ")[0] for h in steps.locator("h2").all_inner_texts()] == [
        "INSERT", "UPDATE", "UPDATE"]

    def changed(step: int) -> list[str]:
        return [row.get_attribute("data-field") or "" for row in
                steps.nth(step).locator("tr.changed").all()]

    assert set(changed(1)) == {"quantity", "updated_at"}
    assert "status" in changed(2)
    assert "quantity" not in changed(2)
    quantity = steps.nth(1).locator('tr[data-field="quantity"]')
    assert quantity.locator("td").all_inner_texts() == ["2", "3"]
    assert "changed" in quantity.locator("th").inner_text()
    # The highlight is visible, not only a class name.
    background = quantity.evaluate("row => getComputedStyle(row).backgroundColor")
    plain = steps.nth(1).locator('tr[data-field="item"]').evaluate(
        "row => getComputedStyle(row).backgroundColor")
    assert background != plain
    screenshot(page, "record")

    # Who, from where, in which request: each links to the rest of what they did.
    step = steps.nth(1)
    assert step.locator("dd").nth(2).inner_text() == "203.0.113.10"
    step.get_by_role("link", name=story["request_ids"]["bob_update"]).click()
    page.wait_for_url(re.compile(r"request_id="))
    in_request = rows(page)
    assert {row["Request"] for row in in_request} == {story["request_ids"]["bob_update"]}
    page.go_back()
    page.locator("section.step").nth(1).get_by_role("link", name=story["bob"]).click()
    page.wait_for_url(re.compile(r"user_id="))
    assert {row["User"] for row in rows(page)} == {story["bob"]}


def test_stored_markup_renders_as_text_and_runs_nothing(
    context: BrowserContext, starlette_url: str
) -> None:
    watch = Watch(context)
    with httpx.Client(base_url=starlette_url, timeout=30,
                      headers={"user-agent": IMG_PAYLOAD}) as attacker:
        attacker.post("/login", json={"email": IMG_PAYLOAD, "password": "x"})
        assert attacker.post("/login", json={"email": BOB.email,
                                             "password": BOB.password}).status_code == 200
        created = attacker.post("/orders", json={
            "item": SCRIPT_PAYLOAD + IMG_PAYLOAD, "quantity": 1, "unit_price": "1.00"})
        order = created.json()["order"]["id"]
        attacker.patch(f"/orders/{order}", json={"quantity": 2})

    page = log_in_with_the_form(context, starlette_url, ALICE)
    page.wait_for_url(f"{starlette_url}/audit/ui/")
    for path in ("/audit/ui/?table=orders", f"/audit/ui/records/orders/{order}",
                 "/audit/ui/logins", "/audit/ui/?kind=auth"):
        page.goto(starlette_url + path)
        for details in page.locator("details").all():
            details.locator("summary").click()  # open every event's values
        assert page.evaluate("window.__pwned") is None, path
        assert page.locator("img").count() == 0, path
        assert page.locator("script").count() == 0, path
    page.goto(f"{starlette_url}/audit/ui/records/orders/{order}")
    item = page.locator('section.step').first.locator('tr[data-field="item"] td').nth(1)
    assert item.inner_text() == SCRIPT_PAYLOAD + IMG_PAYLOAD
    page.goto(f"{starlette_url}/audit/ui/logins")
    assert page.get_by_role("row").filter(has_text=IMG_PAYLOAD).count() == 1
    assert watch.dialogs == []
    assert not [url for url in watch.requests if url.endswith("/x")]

    # And were markup ever to slip through, the policy would stop it: an inline script
    # put into the page is refused by the browser, and says so.
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = "window.__pwned = 'inline'";
                             document.body.appendChild(s); }""")
    assert page.evaluate("window.__pwned") is None
    assert any("Content Security Policy" in line for line in watch.console)


def test_an_unauthorised_browser_gets_no_data(
    context: BrowserContext, starlette_url: str
) -> None:
    story = run_story(starlette_url)
    anonymous = context.new_page()
    for path in ("/audit/ui/", f"/audit/ui/records/orders/{story['order_id']}",
                 "/audit/ui/logins", "/audit/ui/integrity", "/audit/ui/export"):
        response = anonymous.goto(starlette_url + path)
        assert response is not None
        assert response.status == 403, path
        text = anonymous.locator("body").inner_text()
        assert "not authorised" in text
        assert "widget" not in text  # bob's order
        assert story["bob"] not in text
        assert anonymous.locator("table").count() == 0
    screenshot(anonymous, "refused")

    member = log_in_with_the_form(context, starlette_url, BOB)  # logged in, not an admin
    response = member.goto(f"{starlette_url}/audit/ui/?user_id={story['bob']}")
    assert response is not None
    assert response.status == 403
    assert member.locator("table").count() == 0


def test_integrity_says_unanchored_without_a_checkpoint_file(
    context: BrowserContext, starlette_url: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_story(starlette_url)
    page = log_in_with_the_form(context, starlette_url, ALICE)
    page.wait_for_url(f"{starlette_url}/audit/ui/")
    page.get_by_role("link", name="Integrity").click()
    assert page.locator(".badge").inner_text() == "no verification recorded"

    monkeypatch.setenv("AUDIT_HMAC_KEY", generate_hmac_key("viewer-test"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        sealed = seal(conn)  # checkpoints in the database only: no file to anchor to
        result = verify(conn, record=True)
    assert sealed.sealed > 0
    assert result.status == "valid_unanchored"
    page.reload()
    badge = page.locator(".badge")
    assert badge.inner_text() == "valid, unanchored"
    assert "good" not in (badge.get_attribute("class") or "")
    assert page.locator(".badge.good").count() == 0
    text = page.locator("main").inner_text()
    assert "valid_unanchored" in text
    assert result.detail in text
    assert "no: unanchored" in text
    screenshot(page, "integrity")


def test_logins_and_export_pages(
    context: BrowserContext, starlette_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_EXPORT_KEY", generate_signing_key()[0])
    run_story(starlette_url)
    with httpx.Client(base_url=starlette_url, timeout=30,
                      headers={"x-forwarded-for": "198.51.100.66"}) as burst:
        for _ in range(4):
            burst.post("/login", json={"email": CAROL.email, "password": "guess"})
    page = log_in_with_the_form(context, starlette_url, ALICE)
    page.wait_for_url(f"{starlette_url}/audit/ui/")
    page.get_by_role("link", name="Logins").click()
    accounts = page.get_by_role("table", name=re.compile("by account"))
    assert accounts.get_by_role("row").nth(1).get_by_role("rowheader").inner_text() \
        == CAROL.email
    assert accounts.get_by_role("row").nth(1).locator("td").first.inner_text() == "4"
    addresses = page.get_by_role("table", name=re.compile("by IP address"))
    assert addresses.get_by_role("rowheader").all_inner_texts()[:2] == [
        "198.51.100.66", BOB_IP]
    assert page.locator(".chart rect.bar-failed").count() >= 1
    screenshot(page, "logins")

    page.get_by_role("link", name="Export").click()
    screenshot(page, "export")
    page.get_by_label("CSV (spreadsheets)").check()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the export").click()
    saved = Path(download.value.path())
    lines = saved.read_text().splitlines()
    assert "occurred_at" in lines[0]
    assert lines[-1].startswith("#manifest,")
    assert download.value.suggested_filename.endswith(".csv")


def test_the_viewer_under_flask(context: BrowserContext, flask_url: str) -> None:
    run_story(flask_url)
    # The Flask shop logs in with JSON only: the browser context keeps the cookie.
    response = context.request.post(f"{flask_url}/login",
                                    data={"email": ALICE.email, "password": ALICE.password})
    assert response.ok
    page = context.new_page()
    page.goto(f"{flask_url}/audit/ui/")
    assert len(rows(page)) >= 10
    page.get_by_role("link", name="Logins").click()
    page.wait_for_url(f"{flask_url}/audit/ui/logins")
    assert page.locator("h1").inner_text() == "Logins"
    page.get_by_role("link", name="Record history").click()
    page.get_by_label("Table").fill("orders")
    page.get_by_label("Record id").fill("1")
    page.get_by_role("button", name="Show history").click()
    page.wait_for_url(re.compile(r"/audit/ui/records\?table=orders&record_id=1"))
    assert page.locator("section.step").count() == 3
