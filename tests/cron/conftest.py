import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
    """A webhook receiver on 127.0.0.1; `statuses` scripts the answers (then 200)."""

    url: str
    received: list = field(default_factory=list)
    statuses: list = field(default_factory=list)


@pytest.fixture
def webhook():
    state = WebhookServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.received.append({"headers": dict(self.headers), "body": json.loads(body)})
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"try later")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
