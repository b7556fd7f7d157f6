"""The admin panel in a real headless Chromium: log in, add a domain and a mailbox, log out."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from provider.models import Mailbox
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD


def _no_console_errors(browser) -> None:
    """CSP violations and script errors show up as SEVERE entries in the console log."""
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def test_admin_creates_a_mailbox_through_the_forms(
    admin, session, live_server, browser, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15)

    browser.get(f"{live_server}/admin/login")
    browser.find_element(By.NAME, "email").send_keys(ADMIN_EMAIL)
    browser.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(ec.url_to_be(f"{live_server}/admin/"))
    assert ADMIN_EMAIL in browser.page_source
    _no_console_errors(browser)

    browser.get(f"{live_server}/admin/domains")
    browser.find_element(By.NAME, "name").send_keys("shop.test")
    browser.find_element(By.NAME, "name").submit()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "shop.test"))

    browser.get(f"{live_server}/admin/mailboxes/new")
    browser.find_element(By.NAME, "local_part").send_keys("carol")
    browser.find_element(By.NAME, "password").send_keys("a long mailbox passphrase")
    browser.find_element(By.NAME, "password_confirm").send_keys("a long mailbox passphrase")
    quota = browser.find_element(By.NAME, "quota_gb")
    quota.clear()
    quota.send_keys("7")
    # The POP3 download options show only while the policy includes POP3.
    pop3_options = browser.find_element(By.ID, "group-pop3_action")
    browser.find_element(By.CSS_SELECTOR, "input[name=protocols][value=imap]").click()
    assert not pop3_options.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "input[name=protocols][value=both]").click()
    assert pop3_options.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "input[name=protocols][value=pop3]").click()
    assert pop3_options.is_displayed()
    # The browser's own range check stops 7 GB before it is even sent.
    assert browser.execute_script("return arguments[0].checkValidity()", quota) is False
    quota.clear()
    quota.send_keys("12.5")
    browser.find_element(By.NAME, "local_part").submit()
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "carol@shop.test"))
    _no_console_errors(browser)
    browser.save_screenshot(str(tmp_path / "mailbox.png"))

    session.expire_all()
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == "carol@shop.test"))
    assert mailbox is not None
    assert mailbox.quota_bytes == int(12.5 * 1024**3) and mailbox.protocols == ["pop3"]

    browser.get(f"{live_server}/admin/mailboxes?q=carol")
    assert "carol@shop.test" in browser.page_source
    assert browser.find_elements(By.CSS_SELECTOR, "meter, progress")

    browser.find_element(By.CSS_SELECTOR, "form[action$='/admin/logout'] button").click()
    wait.until(ec.url_contains("/admin/login"))
    browser.get(f"{live_server}/admin/mailboxes")
    assert "/admin/login" in browser.current_url
