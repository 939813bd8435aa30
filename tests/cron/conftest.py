from dataclasses import dataclass, field

import httpx
import pytest

from cron.models import CronRun
from tests.conftest import wait_until


@pytest.fixture
def api(live, tenant):
    """An HTTP client on the live gateway, authenticated as a fresh tenant (with agent `assistant`)."""
    with httpx.Client(base_url=f"{live}/api/cron", headers=tenant.headers, timeout=10) as client:
        client.tenant = tenant
        yield client


def finished(cron_run_id, timeout: float = 20) -> CronRun:
    """Wait until a CronRun has its outcome, and return it."""
    return wait_until(
        lambda: CronRun.objects.filter(pk=cron_run_id, status__in=CronRun.TERMINAL_STATUSES).first(),
        timeout=timeout, message=f"cron run {cron_run_id} to finish",
    )


@dataclass
class WebhookServer:
    """A webhook receiver's state (the `webhook` fixture of test_delivery.py); `statuses` scripts the
    answers (then 200)."""

    url: str
    received: list = field(default_factory=list)
    statuses: list = field(default_factory=list)
