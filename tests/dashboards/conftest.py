"""A daphne process serving the test database (websockets need ASGI) and a headless Chromium
page driven by playwright, logged into the admin. Screenshots go to $TIDEWATCH_VAR_DIR."""

import os
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections

from tests.servers import Daphne

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = os.environ.get("TIDEWATCH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
PASSWORD = "browser-pw"


@pytest.fixture
def server(transactional_db, child_env, tmp_path):
    """The base URL of a daphne serving this test's (committed) database."""
    daphne = Daphne(child_env, tmp_path / "daphne.log")
    yield daphne.base
    daphne.stop()


@pytest.fixture
def page(server, monkeypatch, settings):
    """A Chromium page logged into the admin as a superuser; `page.errors` collects every
    console error and uncaught exception."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI") == "true":
            raise AssertionError(f"no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    # playwright's sync API runs an event loop in this thread; the ORM calls of the test are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    # The server checks the password with its own (default) hashers.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    User.objects.create_superuser("browser", password=PASSWORD)
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            tab = context.new_page()
            tab.set_default_timeout(20_000)
            tab.errors = []
            # Chromium asks for /favicon.ico, which the project does not serve: not a page error.
            tab.on(
                "console",
                lambda m: (
                    m.type == "error"
                    and not m.location.get("url", "").endswith("/favicon.ico")
                    and tab.errors.append(f"{m.text} {m.location}")
                ),
            )
            tab.on("pageerror", lambda e: tab.errors.append(str(e)))
            tab.on("response", lambda r: r.status >= 400 and tab.errors.append(f"{r.status} {r.url}"))
            tab.base = server
            tab.goto(server + "/admin/login/")
            tab.fill("#id_username", "browser")
            tab.fill("#id_password", PASSWORD)
            tab.click("input[type=submit]")
            tab.wait_for_url(server + "/admin/")
            yield tab
        finally:
            # The test's queries ran while playwright's loop was running: their connection
            # belongs to this context, which Django's teardown does not see.
            connections.close_all()
            browser.close()


@pytest.fixture
def shots():
    """Where screenshots go: $TIDEWATCH_VAR_DIR/screenshots."""
    folder = Path(os.environ.get("TIDEWATCH_VAR_DIR", "var")) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
