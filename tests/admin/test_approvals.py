"""A pending approval's own page answers it (Allow once / Allow always / Deny) through the one approvals
service; the approval's fields are a read-only record that says who decided and when."""

from django.urls import reverse

from sessions.models import Message, ToolCall
from tenants.models import Agent
from tests.admin.helpers import ask, page, session_for, tool, visible, wait_for_status
from tools.models import Approval
from tools.services import tool_invoke


def pending_invocation(bundle, url: str) -> Approval:
    agent = Agent.objects.get(pk=bundle.agent.pk)
    return tool_invoke(tenant=bundle.tenant, agent=agent, tool="web_fetch", tool_input={"url": url}).approval


def test_allow_on_the_approval_page_resumes_the_run(admin_client, live, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    session = session_for(bundle)
    run = ask(session, "list them " + tool("process", {"action": "list"}))
    wait_for_status(run, "awaiting_approval")
    approval = Approval.objects.get(tool_call__run=run)
    url = reverse("admin:tools_approval_change", args=[approval.pk])

    before = page(admin_client, url)
    assert 'name="allow_once"' in before and 'name="allow_always"' in before and 'name="deny"' in before
    assert "asks to run process: list." in visible(before)
    assert "deletelink" not in before, "a pending approval goes by a decision"
    assert 'name="_save"' not in before and 'name="subject"' not in before, "the record is not an editable form"

    pressed = admin_client.post(reverse("admin:tools_approval_decide", args=[approval.pk]), {"allow_once": "Allow once"}, follow=True)
    assert pressed.status_code == 200
    assert any("allowed once" in str(m) for m in pressed.context["messages"])

    run = wait_for_status(run, "succeeded", "failed")
    assert run.status == "succeeded", run.error
    call = ToolCall.objects.get(run=run)
    assert call.status == "succeeded" and call.decided_by.startswith("admin:admin-")
    reply = Message.objects.filter(session=session, role="assistant").order_by("-seq").first()
    assert reply.text.startswith("Tool results:")

    approval.refresh_from_db()
    after = page(admin_client, url)
    assert approval.status == "allowed" and approval.decided_by == call.decided_by and approval.decided_at
    assert f"Allowed by {approval.decided_by} at" in visible(after)
    assert 'name="allow_once"' not in after and 'name="deny"' not in after


def test_deny_and_allow_always_buttons_and_a_second_press(admin_client, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    # Private addresses: a call that is allowed is refused before any connection is made.
    denied, always = (pending_invocation(bundle, f"http://10.255.0.1/{name}") for name in ("denied", "always"))
    decide = "admin:tools_approval_decide"

    admin_client.post(reverse(decide, args=[denied.pk]), {"deny": "Deny"})
    admin_client.post(reverse(decide, args=[always.pk]), {"allow_always": "Allow always"})
    denied.refresh_from_db()
    always.refresh_from_db()
    assert (denied.status, always.status, always.always) == ("denied", "allowed", True)
    assert Agent.objects.get(pk=bundle.agent.pk).approval["allowlist"] == ["web_fetch:=http://10.255.0.1/always"]

    again = admin_client.post(reverse(decide, args=[denied.pk]), {"allow_once": "Allow once"}, follow=True)
    assert any("Already denied by admin:admin-" in str(m) for m in again.context["messages"])
    denied.refresh_from_db()
    assert denied.status == "denied"

    nonsense = admin_client.post(reverse(decide, args=[always.pk]), {"maybe": "Maybe"}, follow=True)
    assert any("No decision was sent: press one of allow_once" in str(m) for m in nonsense.context["messages"])
    assert admin_client.get(reverse(decide, args=[always.pk])).status_code == 405
    assert admin_client.post(reverse(decide, args=["not-an-id"]), {"deny": "Deny"}).status_code == 302


def test_deciding_needs_the_change_permission(client, make_tenant, django_user_model):
    from django.contrib.auth.models import Permission

    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    approval = pending_invocation(bundle, "http://10.255.0.1/viewer")
    viewer = django_user_model.objects.create_user(username=f"viewer-{approval.pk.hex[:6]}", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_approval"))
    client.login(username=viewer.username, password="pw")

    shown = page(client, reverse("admin:tools_approval_change", args=[approval.pk]))
    assert 'name="allow_once"' not in shown
    assert client.post(reverse("admin:tools_approval_decide", args=[approval.pk]), {"allow_once": "Allow once"}).status_code == 403
    listed = page(client, reverse("admin:tools_approval_changelist"))
    assert 'value="allow_once"' not in listed
    assert Approval.objects.get(pk=approval.pk).status == "pending"
