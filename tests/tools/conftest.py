"""Fixtures for the tools tests: a local web server (127.0.0.1 only), sandbox settings shared by the
test process and the spawned worker/gateway, and helpers to invoke tools and drive runs.

The environment set here at import (collection) time reaches the worker and Daphne, which copy
os.environ when they start. The web server's port is chosen now because the worker must be told to
allowlist `localhost:<port>` before it starts; every other loopback address stays refused.
"""

import os
import secrets
import shutil
import tempfile
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, http_server, wait_until

WEB_PORT = free_port()
WORKSPACE_ROOT = tempfile.mkdtemp(prefix="beamclaw-tools-ws-")
# A value only the server processes know: the sandbox must never be able to read it.
SERVER_SECRET = f"server-secret-{secrets.token_hex(8)}"
TEST_ENV = {
    "BEAMCLAW_TEST_SERVER_SECRET": SERVER_SECRET,
    "BEAMCLAW_WORKSPACE_ROOT": WORKSPACE_ROOT,
    "BEAMCLAW_WEB_FETCH_ALLOW_HOSTS": f"localhost:{WEB_PORT}",
    "BEAMCLAW_WEB_FETCH_MAX_BYTES": "500000",
}
os.environ.update(TEST_ENV)

requires_bwrap = pytest.mark.skipif(
    shutil.which("bwrap", path="/usr/local/bin:/usr/bin:/bin") is None,
    reason="bubblewrap is not installed and could not be installed (scripts/ensure_sandbox_tools.sh needs root + apt-get)",
)


@pytest.fixture(autouse=True)
def tools_settings(settings):
    """The same tools settings in this process as in the spawned services."""
    settings.BEAMCLAW_TOOLS = {
        **settings.BEAMCLAW_TOOLS,
        "WORKSPACE_ROOT": Path(WORKSPACE_ROOT),
        "WEB_FETCH_ALLOW_HOSTS": [f"localhost:{WEB_PORT}"],
        "WEB_FETCH_MAX_BYTES": 500_000,
    }
    return settings


@pytest.fixture(scope="session", autouse=True)
def _remove_workspaces():
    yield
    shutil.rmtree(WORKSPACE_ROOT, ignore_errors=True)


PAGE = b"""<!doctype html><html><head><title>Test page</title><style>body{color:red}</style>
<script>alert("x")</script></head><body><h1>Hello</h1><p>Some <b>bold</b> text &amp; a
<a href="/other">link</a>.</p><ul><li>one</li><li>two</li></ul><pre>  code
  block</pre></body></html>"""


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = "text/plain", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.hits.append(self.path)
        path = self.path
        if path == "/page":
            self._send(200, PAGE, "text/html; charset=utf-8")
        elif path == "/text":
            self._send(200, b"plain text body", "text/plain")
        elif path == "/host":
            self._send(200, self.headers.get("Host", "").encode(), "text/plain")
        elif path.startswith("/to?"):
            self._send(302, headers={"Location": path[len("/to?"):]})
        elif path.startswith("/chain/"):
            remaining = int(path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/chain/{remaining - 1}" if remaining else "/text"})
        elif path == "/big":
            self._send(200, b"x" * 2_000_000, "text/plain")
        elif path == "/binary":
            self._send(200, b"\x00\x01\x02", "application/octet-stream")
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"drip\n")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass
        elif path == "/missing":
            self._send(404, b"not here", "text/plain")
        else:
            self._send(404)


@pytest.fixture(scope="session")
def web_server():
    """A web server on 127.0.0.1:WEB_PORT; its `hits` list records every path requested."""
    with http_server(_Handler, port=WEB_PORT) as server:
        yield server


def invoke(live: str, bundle, tool: str, tool_input: dict, *, session=None, agent: str = "assistant", timeout: float = 60):
    body = {"agent": agent, "tool": tool, "input": tool_input}
    if session is not None:
        body["session"] = str(session)
    return httpx.post(f"{live}/api/tools/invoke", json=body, headers=bundle.headers, timeout=timeout)


def exec_ok(live: str, bundle, command: str, **kwargs) -> dict:
    response = invoke(live, bundle, "exec", {"command": command, **kwargs.pop("extra", {})}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def assert_worker_healthy(live: str, bundle) -> None:
    """The worker still runs tools after an attack."""
    result = exec_ok(live, bundle, "echo still-alive")
    assert result["ok"] and result["output"] == "still-alive\n", result


def sandbox_processes(uid: int, *, running: bool = False) -> list[int]:
    """Host pids owned by a sandbox uid. With `running`, zombies are left out: a process that has ended and
    that its parent has not reaped yet runs nothing. That is for a dead worker's sandboxes, whose processes go
    to the machine's init, which may reap them seconds later on a busy machine; while the worker lives, an
    unreaped process is its own leak, and counts."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid != uid:
                    continue
                with open(f"/proc/{entry.name}/stat") as stat:
                    state = stat.read().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if not (running and state == "Z"):
                pids.append(int(entry.name))
    return pids


def wait_for_run(run_id, timeout: float = 30):
    from sessions.models import Run

    def finished():
        run = Run.objects.get(pk=run_id)
        return run if run.is_terminal else None

    return wait_until(finished, timeout=timeout, message=f"run {run_id} to finish")
