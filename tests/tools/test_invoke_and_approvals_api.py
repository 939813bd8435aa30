"""POST /api/tools/invoke and /api/approvals/: auth, tenant scoping, policy, validation, approvals."""

import subprocess
import sys

import httpx
import pytest

from tenants.models import Agent
from tests.conftest import ROOT, wait_until
from tests.tools.conftest import WEB_PORT, invoke
from tools.models import Approval
from tools.services import ApprovalNotPending, approval_resolve


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as client:
        yield client


def set_agent(bundle, **fields) -> Agent:
    Agent.objects.filter(pk=bundle.agent.pk).update(**fields)
    return Agent.objects.get(pk=bundle.agent.pk)


def test_invoke_needs_a_key_and_stays_in_its_tenant(live, tenant, make_tenant):
    assert httpx.post(f"{live}/api/tools/invoke", json={"agent": "assistant", "tool": "web_fetch", "input": {}}).status_code == 401
    other = make_tenant()
    response = invoke(live, tenant, "web_fetch", {"url": "http://x/"}, agent="no-such-agent")
    assert response.status_code == 404 and "no-such-agent" in response.text
    foreign_session = other.agent.sessions.create(tenant=other.tenant, key="agent:assistant:theirs")
    assert invoke(live, tenant, "web_fetch", {"url": "http://x/"}, session=foreign_session.pk).status_code == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"tool": "exec", "input": {}}, "agent"),
        ({"agent": "assistant", "input": {}}, "tool"),
        ({"agent": "assistant", "tool": "exec", "input": "ls"}, "input"),
        ({"agent": "assistant", "tool": "exec", "input": {}}, "input.command"),
        ({"agent": "assistant", "tool": "exec", "input": {"command": "ls", "timeout": -1}}, "input.timeout"),
        ({"agent": "assistant", "tool": "exec", "input": {"command": "ls", "env": {"LD_PRELOAD": "x"}}}, "input.env.LD_PRELOAD"),
        ({"agent": "assistant", "tool": "web_fetch", "input": {"url": "http://x/", "extra": 1}}, "input.extra"),
        ({"agent": "assistant", "tool": "no_such_tool", "input": {}}, "tool"),
        ({"agent": "assistant", "tool": "exec", "input": {"command": "ls"}, "session": "nope"}, "session"),
        ({"agent": "assistant", "tool": "exec", "input": {"command": "ls", "env": {"A\u0000": "b"}}}, "input"),
        ({"agent": "assist\u0000ant", "tool": "exec", "input": {"command": "ls"}}, "agent"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api, body, field):
    response = api.post("/tools/invoke", json=body)
    assert response.status_code == 400, response.text
    assert field in response.json(), response.json()


def test_a_tool_the_policy_forbids_is_a_403(api, tenant):
    set_agent(tenant, tool_policy={"allow": ["group:web"], "deny": []})
    response = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": "id"}})
    assert response.status_code == 403 and "not allowed for agent 'assistant'" in response.json()["detail"]
    set_agent(tenant, tool_policy={"allow": [], "deny": ["web_fetch"]})
    assert api.post("/tools/invoke", json={"agent": "assistant", "tool": "web_fetch", "input": {"url": "http://x/"}}).status_code == 403


def test_approval_allow_once_then_result_on_the_approval(api, tenant, web_server):
    set_agent(tenant, approval={"mode": "always", "allowlist": []})
    url = f"http://localhost:{WEB_PORT}/text"
    pending = api.post("/tools/invoke", json={"agent": "assistant", "tool": "web_fetch", "input": {"url": url}})
    assert pending.status_code == 202, pending.text
    approval = pending.json()
    assert approval["status"] == "pending" and approval["subject"] == url and approval["result"] is None
    assert [a["id"] for a in api.get("/approvals/", params={"status": "pending"}).json()["results"]] == [approval["id"]]
    decided = api.post(f"/approvals/{approval['id']}/approve/", json={})
    assert decided.status_code == 200 and decided.json()["status"] == "allowed" and decided.json()["decided_by"].startswith("api-key:")
    done = wait_until(lambda: (a := api.get(f"/approvals/{approval['id']}/").json())["result"] and a, timeout=15, message="the result")
    assert done["result"]["ok"] and done["result"]["output"] == "plain text body"
    invocation = api.get(f"/tools/invocations/{done['invocation']}/").json()
    assert invocation["status"] == "succeeded" and invocation["approval"] == approval["id"]
    again = api.post(f"/approvals/{approval['id']}/deny/", json={})
    assert again.status_code == 409 and "already decided" in again.json()["detail"]
    assert api.get("/approvals/", params={"status": "pending"}).json()["count"] == 0
    assert api.get("/approvals/", params={"status": "bogus"}).status_code == 400
    assert api.get("/approvals/", params={"agent": "a\x00b"}).status_code == 400
    assert api.get("/approvals/", params={"session": "not-a-uuid"}).status_code == 400


def test_allow_always_extends_the_allowlist(api, tenant):
    set_agent(tenant, approval={"mode": "on_miss", "allowlist": ["exec:git *"]})
    command = "echo a; echo b"
    first = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": command}})
    assert first.status_code == 202
    api.post(f"/approvals/{first.json()['id']}/approve/", json={"always": True}).raise_for_status()
    agent = Agent.objects.get(pk=tenant.agent.pk)
    assert agent.approval["allowlist"] == ["exec:git *", f"exec:={command}"]
    again = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": command}})
    assert again.status_code == 200 and again.json()["output"] == "a\nb\n"
    variant = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": command + "; id"}})
    assert variant.status_code == 202, "the exact pattern does not stretch to other commands"


def test_deny_and_timeout(api, tenant):
    set_agent(tenant, approval={"mode": "always", "allowlist": [], "timeout_seconds": 1})
    denied = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": "touch /workspace/x"}})
    response = api.post(f"/approvals/{denied.json()['id']}/deny/", json={"reason": "not today"})
    assert response.json()["status"] == "denied" and response.json()["reason"] == "not today"
    result = wait_until(lambda: api.get(f"/approvals/{denied.json()['id']}/").json()["result"], timeout=10, message="denial result")
    assert result["ok"] is False and "denied" in result["error"]
    expiring = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": "id"}}).json()
    expired = wait_until(lambda: (a := api.get(f"/approvals/{expiring['id']}/").json())["status"] == "expired" and a,
                         timeout=30, message="the approval to expire (housekeeping runs every 5 s)")
    assert expired["decided_by"] == "timeout" and "nobody approved it in time" in expired["result"]["error"]


def test_approvals_of_other_tenants_do_not_exist(api, live, make_tenant):
    other = make_tenant(approval={"mode": "always", "allowlist": []})
    theirs = invoke(live, other, "exec", {"command": "id"}).json()
    assert api.get(f"/approvals/{theirs['id']}/").status_code == 404
    assert api.get(f"/tools/invocations/{theirs['invocation']}/").status_code == 404
    assert api.post(f"/approvals/{theirs['id']}/approve/", json={}).status_code == 404
    assert api.get("/approvals/").json()["count"] == 0
    with pytest.raises(Approval.DoesNotExist):
        approval_resolve(approval_id=theirs["id"], tenant=make_tenant().tenant, decision="allow", decided_by="test")
    with pytest.raises(Approval.DoesNotExist):
        approval_resolve(approval_id="not-a-uuid", tenant=other.tenant, decision="allow", decided_by="test")
    resolved = approval_resolve(approval_id=theirs["id"], tenant=other.tenant, decision="deny", decided_by="ws:alice")
    assert resolved.status == "denied" and resolved.decided_by == "ws:alice"
    with pytest.raises(ApprovalNotPending):
        approval_resolve(approval_id=theirs["id"], tenant=other.tenant, decision="allow", decided_by="ws:alice")
    with pytest.raises(ValueError):
        approval_resolve(approval_id=theirs["id"], tenant=other.tenant, decision="maybe", decided_by="ws:alice")


def test_openapi_schema_lists_the_tool_endpoints(live):
    schema = httpx.get(f"{live}/api/schema/", params={"format": "json"}).json()
    for path in ("/api/tools/invoke", "/api/approvals/", "/api/approvals/{id}/", "/api/approvals/{id}/approve/",
                 "/api/approvals/{id}/deny/", "/api/tools/invocations/{id}/"):
        assert path in schema["paths"], path
    result = subprocess.run([sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
