"""The WebSocket protocol at /ws/, driven with a real client against Daphne."""

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from sessions.models import AgentSession


class WS:
    """A connected client; `call` sends a request and returns its response, collecting events meanwhile."""

    def __init__(self, live: str, token: str | None = None):
        self.conn = connect(live.replace("http://", "ws://") + "/ws/", open_timeout=10)
        self.events: list[dict] = []
        self.next_id = 0
        self.welcome: dict = {}
        if token is not None:
            reply = self.call("connect", {"token": token})
            assert reply["ok"], reply
            self.welcome = reply["payload"]

    def send(self, frame) -> None:
        self.conn.send(frame if isinstance(frame, str) else json.dumps(frame))

    def recv(self, timeout: float = 20) -> dict:
        return json.loads(self.conn.recv(timeout=timeout))

    def call(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        request_id = str(self.next_id)
        self.send({"type": "req", "id": request_id, "method": method, "params": params or {}})
        while True:
            frame = self.recv()
            if frame["type"] == "event":
                self.events.append(frame)
            elif frame.get("id") == request_id:
                return frame

    def events_until_done(self, run_id: str, timeout: float = 30) -> list[dict]:
        """Events of one run up to its terminal event."""
        def done():
            return any(e["payload"].get("run_id") == run_id and e["event"] in ("run.completed", "run.failed", "run.aborted") for e in self.events)

        while not done():
            frame = self.recv(timeout)
            if frame["type"] == "event":
                self.events.append(frame)
        return [e for e in self.events if e["payload"].get("run_id") == run_id]

    def close(self):
        self.conn.close()


@pytest.fixture
def ws(live, tenant):
    clients = []

    def open_client(token=tenant.api_key):
        client = WS(live, token)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def test_connect_then_chat_streams_ordered_events(ws, tenant):
    client = ws()
    session = client.call("sessions.create", {"agent": "assistant", "key": "ws-chat"})["payload"]
    assert session["key"] == "agent:assistant:ws-chat"
    reply = client.call("chat.send", {"session": session["id"], "message": "hello over websocket"})
    assert reply["ok"] and reply["payload"]["run_id"]
    run_events = client.events_until_done(reply["payload"]["run_id"])
    assert [e["seq"] for e in run_events] == list(range(1, len(run_events) + 1))
    assert run_events[0]["event"] == "run.started" and run_events[-1]["event"] == "run.completed"
    text = "".join(e["payload"]["text"] for e in run_events if e["event"] == "text.delta")
    assert text == "Echo: hello over websocket"

    history = client.call("sessions.history", {"session": session["id"]})["payload"]["messages"]
    assert [(m["role"], m["text"]) for m in history] == [("user", "hello over websocket"), ("assistant", text)]


def test_methods_list_and_health(ws, tenant):
    client = ws()
    assert client.call("health")["payload"]["status"] == "ok"
    assert [a["slug"] for a in client.call("agents.list")["payload"]["agents"]] == ["assistant"]
    client.call("sessions.create", {"agent": "assistant", "key": "listed"})
    sessions = client.call("sessions.list")["payload"]["sessions"]
    assert [s["key"] for s in sessions] == ["agent:assistant:listed"]


def test_many_sockets_on_one_session_all_see_its_events(ws, tenant):
    sender, watcher_a, watcher_b = ws(), ws(), ws()
    session = sender.call("sessions.create", {"agent": "assistant", "key": "shared"})["payload"]
    for watcher in (watcher_a, watcher_b):
        assert watcher.call("sessions.subscribe", {"session": session["id"]})["ok"]
    run_id = sender.call("chat.send", {"session": session["id"], "message": "to everyone"})["payload"]["run_id"]
    expected = sender.events_until_done(run_id)
    for watcher in (watcher_a, watcher_b):
        seen = watcher.events_until_done(run_id)
        assert [(e["seq"], e["event"]) for e in seen] == [(e["seq"], e["event"]) for e in expected]


def test_abort_over_websocket(ws, tenant):
    client = ws()
    session = client.call("sessions.create", {"agent": "assistant"})["payload"]
    run_id = client.call("chat.send", {"session": session["id"], "message": "a b c d e f g h [[delay_ms=200]]"})["payload"]["run_id"]
    while not any(e["event"] == "text.delta" for e in client.events):
        client.events.append(client.recv())
    assert client.call("chat.abort", {"run_id": run_id})["ok"]
    assert client.events_until_done(run_id)[-1]["event"] == "run.aborted"


@pytest.mark.parametrize(
    "first_frame",
    ["not json", json.dumps({"type": "req", "id": "1", "method": "health"}), json.dumps([1, 2])],
)
def test_anything_but_connect_first_closes_with_a_reason(live, first_frame):
    client = WS(live)
    client.send(first_frame)
    last = client.recv()
    assert last["ok"] is False and last["error"]["code"] == "connect_required"
    with pytest.raises(ConnectionClosed) as closed:
        client.recv()
    assert closed.value.rcvd.code == 4400


@pytest.mark.parametrize("token, code", [(None, 4401), ("bc_wrong_key", 4401)])
def test_bad_token_closes_with_4401(live, token, code):
    client = WS(live)
    client.send({"type": "req", "id": "c", "method": "connect", "params": {"token": token}})
    reply = client.recv()
    assert reply["id"] == "c" and reply["ok"] is False
    with pytest.raises(ConnectionClosed) as closed:
        client.recv()
    assert closed.value.rcvd.code == code


def test_malformed_frames_get_errors_and_the_socket_stays_usable(ws):
    client = ws()
    bad_frames = [
        "{oops", "[]", "42", json.dumps({"type": "event"}), json.dumps({"type": "req", "id": "x"}),
        json.dumps({"type": "req", "id": "y", "method": "health", "params": [1]}),
    ]
    for frame in bad_frames:
        client.send(frame)
        reply = client.recv()
        assert reply["type"] == "res" and reply["ok"] is False and reply["error"]["code"] == "bad_frame"
    unknown = client.call("no.such.method")
    assert unknown["error"]["code"] == "unknown_method" and "chat.send" in unknown["error"]["message"]
    invalid = client.call("chat.send", {"session": "not-a-uuid", "message": "x"})
    assert invalid["error"]["code"] == "invalid_params"
    assert client.call("health")["ok"], "the connection still works"


def test_another_tenants_session_is_not_found(ws, make_tenant):
    owner = make_tenant()
    session = AgentSession.objects.create(tenant=owner.tenant, agent=owner.agent, key="agent:assistant:private")
    intruder = ws()
    for method, params in [
        ("sessions.history", {"session": str(session.pk)}),
        ("sessions.reset", {"session": str(session.pk)}),
        ("sessions.subscribe", {"session": str(session.pk)}),
        ("chat.send", {"session": str(session.pk), "message": "hi"}),
        ("chat.abort", {"session": str(session.pk)}),
    ]:
        reply = intruder.call(method, params)
        assert reply["ok"] is False and reply["error"]["code"] == "not_found", (method, reply)
    assert session.messages.count() == 0


def test_approvals_list_and_resolve_over_websocket(ws, tenant):
    tenant.agent.approval = {"mode": "always", "allowlist": []}
    tenant.agent.save()
    client = ws()
    session = client.call("sessions.create", {"agent": "assistant"})["payload"]
    run_id = client.call(
        "chat.send", {"session": session["id"], "message": '[[tool=exec:{"command": "echo approved-and-ran"}]]'}
    )["payload"]["run_id"]
    while not any(e["event"] == "approval.requested" for e in client.events):
        client.events.append(client.recv())
    pending = client.call("approvals.list")["payload"]["approvals"]
    assert len(pending) == 1 and pending[0]["tool"] == "exec"
    bad = client.call("approvals.resolve", {"approval": pending[0]["id"], "decision": "maybe"})
    assert bad["error"]["code"] == "invalid_params"
    resolved = client.call("approvals.resolve", {"approval": pending[0]["id"], "decision": "allow"})
    assert resolved["ok"], resolved
    run_events = client.events_until_done(run_id)
    assert run_events[-1]["event"] == "run.completed"
    assert "approved-and-ran" in run_events[-1]["payload"]["text"]
    again = client.call("approvals.resolve", {"approval": pending[0]["id"], "decision": "deny"})
    assert again["error"]["code"] == "conflict"


def _approval_events(client: WS, approval_id: str) -> list[str]:
    return [e["event"] for e in client.events if e["payload"].get("approval_id") == approval_id]


def _receive_until(client: WS, predicate) -> None:
    while not any(predicate(e) for e in client.events):
        frame = client.recv()
        if frame["type"] == "event":
            client.events.append(frame)


def test_each_approval_event_arrives_once_and_in_order(ws, tenant, live):
    """A socket following the run gets approval events from the run's stream and from the tenant's group;
    it must show each once, and never `requested` after `resolved` (a decided approval shown as pending)."""
    tenant.agent.approval = {"mode": "always", "allowlist": []}
    tenant.agent.save()
    follower, bystander = ws(), ws()
    session = follower.call("sessions.create", {"agent": "assistant"})["payload"]
    run_id = follower.call(
        "chat.send", {"session": session["id"], "message": '[[tool=exec:{"command": "echo once"}]]'}
    )["payload"]["run_id"]
    _receive_until(follower, lambda e: e["event"] == "approval.requested")
    approval_id = next(e for e in follower.events if e["event"] == "approval.requested")["payload"]["approval_id"]
    assert follower.call("approvals.resolve", {"approval": approval_id, "decision": "allow"})["ok"]
    assert follower.events_until_done(run_id)[-1]["event"] == "run.completed"

    # Every copy of those events has been handled once a later approval's event has arrived: the run's
    # stream is ordered up to run.completed, and group messages reach a socket in the order they were sent.
    later = httpx.post(
        f"{live}/api/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": "echo later"}},
        headers=tenant.headers, timeout=30,
    )
    assert later.status_code == 202, later.text
    later_id = later.json()["id"]
    for client in (follower, bystander):
        _receive_until(client, lambda e: e["payload"].get("approval_id") == later_id)
        assert _approval_events(client, approval_id) == ["approval.requested", "approval.resolved"]
        assert _approval_events(client, later_id) == ["approval.requested"]
