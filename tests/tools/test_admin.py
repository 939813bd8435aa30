"""The Django admin can answer approvals: allow once, allow always, deny."""

from django.urls import reverse

from tenants.models import Agent
from tests.conftest import wait_until
from tools.models import Approval, ToolInvocation
from tools.services import tool_invoke


def pending(bundle, url: str) -> Approval:
    agent = Agent.objects.get(pk=bundle.agent.pk)
    return tool_invoke(tenant=bundle.tenant, agent=agent, tool="web_fetch", tool_input={"url": url}).approval


def test_changelists_render(admin_client, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    pending(bundle, "http://10.255.0.1/")
    for model in (Approval, ToolInvocation):
        url = reverse(f"admin:tools_{model._meta.model_name}_changelist")
        assert admin_client.get(url).status_code == 200
        assert admin_client.get(url, {"q": bundle.tenant.slug}).status_code == 200
    approval = Approval.objects.get(tenant=bundle.tenant)
    assert admin_client.get(reverse("admin:tools_approval_change", args=[approval.pk])).status_code == 200


def test_admin_actions_decide_approvals(admin_client, make_tenant, live):
    bundle = make_tenant(approval={"mode": "on_miss", "allowlist": []})
    # Private addresses: if a call runs, it is refused before any connection or DNS lookup.
    once, always, denied = (pending(bundle, f"http://10.255.0.1/{name}") for name in ("once", "always", "denied"))
    changelist = reverse("admin:tools_approval_changelist")
    for action, approval in (("allow_once", once), ("allow_always", always), ("deny", denied)):
        response = admin_client.post(changelist, {"action": action, "_selected_action": [approval.pk]}, follow=True)
        assert response.status_code == 200
    statuses = {a.pk: (a.status, a.always, a.decided_by) for a in Approval.objects.filter(tenant=bundle.tenant)}
    user = statuses[once.pk][2]
    assert user.startswith("admin:admin-")
    assert statuses == {once.pk: ("allowed", False, user), always.pk: ("allowed", True, user), denied.pk: ("denied", False, user)}
    assert Agent.objects.get(pk=bundle.agent.pk).approval["allowlist"] == ["web_fetch:=http://10.255.0.1/always"]
    again = admin_client.post(changelist, {"action": "deny", "_selected_action": [once.pk]}, follow=True)
    assert any("already decided" in str(m) for m in again.context["messages"])
    wait_until(lambda: ToolInvocation.objects.get(approval=once).status == "failed", timeout=15, message="the allowed call to run")
    assert "refused to fetch" in ToolInvocation.objects.get(approval=once).output["error"]
