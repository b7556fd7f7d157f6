"""The time machine in a real headless Chromium: an admin restores a deleted message, an owner
logs in to /account and sees their snapshots."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from provider.models import AdminUser
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, MAILBOX_PASSWORD, make_mailbox
from tests.web.timemachine_helpers import deliver, expunge, folder_bodies, mail, snapshot


def _no_console_errors(browser) -> None:
    """CSP violations and script errors show up as SEVERE entries in the console log."""
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def test_admin_restores_a_deleted_message_and_the_owner_sees_the_snapshots(
    admin: AdminUser, session: Session, live_server: str, browser, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15)
    mailbox = make_mailbox(session)
    uids = deliver(session, mailbox, [mail("Contract signed"), mail("Lunch on Friday")])
    snapshot_id = snapshot(session, mailbox)
    expunge(session, mailbox, [uids[0]])

    browser.get(f"{live_server}/admin/login")
    browser.find_element(By.NAME, "email").send_keys(ADMIN_EMAIL)
    browser.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(ec.url_to_be(f"{live_server}/admin/"))

    browser.get(f"{live_server}/admin/mailboxes/{mailbox.id}")
    browser.find_element(By.LINK_TEXT, "Backups").click()
    wait.until(ec.url_contains("/backups"))
    browser.find_element(By.PARTIAL_LINK_TEXT, "Browse").click()
    wait.until(ec.url_contains(snapshot_id))
    assert "Contract signed" in browser.page_source and "Lunch on Friday" in browser.page_source

    search = browser.find_element(By.NAME, "q")
    search.send_keys("contract")
    search.submit()
    wait.until(ec.url_contains("q=contract"))
    assert "Lunch on Friday" not in browser.page_source
    _no_console_errors(browser)

    browser.find_element(By.CSS_SELECTOR, f"input[name=uid][value='{uids[0]}']").click()
    browser.find_element(By.NAME, "restore_messages").click()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Restored 1 message"))
    assert "Restore history" in browser.page_source
    _no_console_errors(browser)
    browser.save_screenshot(str(tmp_path / "restored.png"))
    assert sorted(folder_bodies(mailbox)) == sorted(
        [mail("Contract signed"), mail("Lunch on Friday")]
    )

    browser.find_element(By.CSS_SELECTOR, "form[action$='/admin/logout'] button").click()
    wait.until(ec.url_contains("/admin/login"))

    browser.get(f"{live_server}/account/login")
    browser.find_element(By.NAME, "email").send_keys(mailbox.address)
    browser.find_element(By.NAME, "password").send_keys(MAILBOX_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(ec.url_to_be(f"{live_server}/account/"))
    assert mailbox.address in browser.page_source
    browser.find_element(By.LINK_TEXT, "Open backups").click()
    wait.until(ec.url_contains("/account/backups"))
    assert f"/account/backups/{snapshot_id}" in browser.page_source
    _no_console_errors(browser)
    browser.get(f"{live_server}/admin/")
    assert "/admin/login" in browser.current_url
