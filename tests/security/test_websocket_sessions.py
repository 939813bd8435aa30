"""What an open WebSocket keeps after its key changes, and what it may overhear from its tenant."""

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tenants.models import Agent
from tests.conftest import wait_until
from tests.security.test_keys_scopes import key_for
from tests.sessions.test_websocket import WS


def token(headers: dict) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_a_key_revoked_while_its_socket_is_open_stops_working(live, tenant):
    headers = key_for(tenant, "read", "chat")
    socket = WS(live, token(headers))
    try:
        assert socket.call("sessions.list")["ok"]
        prefix = "bc_" + token(headers).split("_")[1] + "_"
        keys = httpx.get(f"{live}/api/keys/", headers=tenant.headers, timeout=10).json()["results"]
        key_id = next(k["id"] for k in keys if k["key_prefix"] == prefix)
        httpx.post(f"{live}/api/keys/{key_id}/revoke/", headers=tenant.headers, timeout=10).raise_for_status()
        refused = socket.call("chat.send", {"session": "00000000-0000-0000-0000-000000000000", "message": "hi"})
        assert not refused["ok"] and refused["error"]["code"] == "revoked_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 4401
    finally:
        socket.conn.close()


def test_a_chat_only_socket_does_not_overhear_the_tenants_approvals(live, tenant):
    Agent.objects.filter(pk=tenant.agent.pk).update(approval={"mode": "always", "allowlist": []})
    reader, chatter = WS(live, token(key_for(tenant, "read"))), WS(live, token(key_for(tenant, "chat")))
    try:
        secret_input = {"command": "echo hi", "env": {"DB_PASSWORD": "admin-only-secret"}}
        pending = httpx.post(f"{live}/api/tools/invoke", headers=tenant.headers, timeout=30,
                             json={"agent": "assistant", "tool": "exec", "input": secret_input})
        assert pending.status_code == 202
        httpx.post(f"{live}/api/approvals/{pending.json()['id']}/deny/", headers=tenant.headers, json={}, timeout=10)

        def reader_saw_both():
            reader.call("health")
            return [e["event"] for e in reader.events if e["event"].startswith("approval.")] == [
                "approval.requested", "approval.resolved"]

        wait_until(reader_saw_both, timeout=20, message="the read socket to see the approval")
        # The requested event went to both sockets' channels before the reader got the resolved one.
        assert chatter.call("health")["ok"]
        assert not [e for e in chatter.events if e["event"].startswith("approval.")]
        assert "admin-only-secret" not in str(chatter.events)
    finally:
        reader.close()
        chatter.close()


@pytest.mark.parametrize("method, params", [
    ("chat.send", {"session": "00000000-0000-0000-0000-000000000000", "message": "a\u0000b"}),
    ("sessions.list", {"agent": "\u0000"}),
    ("sessions.create", {"agent": "assistant", "key": "x\u0000"}),
])
def test_nul_characters_in_a_frame_are_an_error_frame_not_a_dropped_socket(live, tenant, method, params):
    socket = WS(live, tenant.api_key)
    try:
        reply = socket.call(method, params)
        assert not reply["ok"] and reply["error"]["code"] == "bad_frame" and "NUL" in reply["error"]["message"]
        assert socket.call("health")["ok"], "the socket keeps answering"
    finally:
        socket.close()
