"""Fixtures for the dashboard's tests: a staff user, a Django test client logged in as one, and a real
browser (Debian's chromium, driven by Playwright) logged in as one against the live stack.

Playwright's sync API runs an asyncio loop in the test's thread, and Django refuses ORM calls from a thread
with a running loop unless told otherwise: the tests read the database between browser steps, which is
safe here (one thread, no async code of ours in this process).
"""

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

PASSWORD = "operator-pw-1"


@dataclass
class Operator:
    username: str
    password: str
    user: object


@pytest.fixture
def operator() -> Operator:
    username = f"operator-{uuid.uuid4().hex[:6]}"
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, is_staff=True)
    return Operator(username=username, password=PASSWORD, user=user)


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client()
    client.force_login(operator.user)
    return client


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module: Playwright keeps an event loop running in this thread while it is up,
    and Django's async_to_sync (used by services, e.g. to notify sockets) refuses to run beside one, so it
    must be gone before the modules that call services directly."""
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed: run scripts/ensure_browser.sh (needs root and apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def screenshots(log_dir, request):
    """`shot(page, name)` saves a full-page PNG under <log dir>/dashboard/<test name>-<name>.png."""
    folder = Path(log_dir) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str) -> Path:
        path = folder / f"{request.node.name}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return shot


@pytest.fixture
def operator_page(browser, live, operator):
    """A browser tab logged in to the dashboard as a staff user, through the login form."""
    context = browser.new_context(base_url=live, viewport={"width": 1366, "height": 860})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto("/")
    page.get_by_label("Username").fill(operator.username)
    page.get_by_label("Password").fill(operator.password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live}/")
    yield page
    context.close()
