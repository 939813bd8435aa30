"""Sessions and runs as history: no editable transcript, counters or parent dropdown; tool calls and their
results readable in the transcript; tenant filters; Abort through the engine's service."""

from django.urls import reverse

from sessions.models import AgentSession, Message, Run, ToolCall
from tests.admin.helpers import ask, page, session_for, tool, wait_for_status


def test_session_page_is_history_with_a_scoped_parent_link_and_readable_tool_calls(admin_client, tenant, make_tenant):
    parent = session_for(tenant)
    child = session_for(tenant, parent=parent, label="researcher")
    Message.objects.create(session=child, seq=1, role="user", content=[{"type": "text", "text": "count the files"}])
    Message.objects.create(session=child, seq=2, role="assistant", content=[
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "exec", "input": {"command": "ls | wc -l"}},
    ])
    Message.objects.create(session=child, seq=3, role="user", content=[
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42\n\n[exit code 0]"}]},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no such command", "is_error": True},
    ])

    shown = page(admin_client, reverse("admin:agent_sessions_agentsession_change", args=[child.pk]))
    assert '<select name="parent"' not in shown and 'name="spawned_by"' not in shown
    for field in ("key", "tenant", "agent", "input_tokens", "output_tokens", "next_seq", "status"):
        assert f'name="{field}"' not in shown, f"{field} is history, not a form field"
    assert '<select name="queue_mode"' in shown
    parent_url = reverse("admin:agent_sessions_agentsession_change", args=[parent.pk])
    assert f'<a href="{parent_url}">{parent.key}</a>' in shown
    assert "tool call: exec" in shown and '{"command": "ls | wc -l"}' in shown
    assert "tool result" in shown and "42\n\n[exit code 0]" in shown
    assert "tool error" in shown and "no such command" in shown
    assert 'name="messages-0-content"' not in shown

    child_url = reverse("admin:agent_sessions_agentsession_change", args=[child.pk])
    assert f'<a href="{child_url}">{child.key}</a>' in page(admin_client, parent_url)

    # A parent in another tenant (never made by the engine) is not linked from this tenant's session.
    stranger = session_for(make_tenant())
    AgentSession.objects.filter(pk=child.pk).update(parent=stranger)
    assert stranger.key not in page(admin_client, child_url)

    message = Message.objects.get(session=child, seq=2)
    message_page = page(admin_client, reverse("admin:agent_sessions_message_change", args=[message.pk]))
    assert "tool call: exec" in message_page and 'name="_save"' not in message_page


def test_the_queue_mode_is_the_one_thing_an_operator_changes(admin_client, tenant):
    session = session_for(tenant, input_tokens=7)
    url = reverse("admin:agent_sessions_agentsession_change", args=[session.pk])
    data = {"queue_mode": "collect", "input_tokens": "999", "key": "agent:assistant:renamed",
            "messages-TOTAL_FORMS": 0, "messages-INITIAL_FORMS": 0, "runs-TOTAL_FORMS": 0, "runs-INITIAL_FORMS": 0}
    assert admin_client.post(url, data).status_code == 302
    session.refresh_from_db()
    assert (session.queue_mode, session.input_tokens, session.key.endswith("renamed")) == ("collect", 7, False)


def test_lists_filter_by_tenant(admin_client, tenant):
    for model in (AgentSession, Run, Message, ToolCall):
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        shown = page(admin_client, url)
        assert "By tenant" in shown, model


def test_abort_action_ends_a_running_run(admin_client, live, tenant):
    session = session_for(tenant)
    words = " ".join(f"w{i}" for i in range(60))
    run = ask(session, f"{words} [[deltas=60]][[delay_ms=200]]")
    wait_for_status(run, "running")
    changelist = reverse("admin:agent_sessions_run_changelist")
    response = admin_client.post(changelist, {"action": "abort_runs", "_selected_action": [run.pk]}, follow=True)
    assert any("Aborted 1 run(s)" in str(m) for m in response.context["messages"])
    run = wait_for_status(run, "aborted", "succeeded", "failed", timeout=15)
    assert run.status == "aborted" and run.error.startswith("aborted by admin:admin-")

    again = admin_client.post(changelist, {"action": "abort_runs", "_selected_action": [run.pk]}, follow=True)
    assert any("already ended" in str(m) for m in again.context["messages"])


def test_abort_button_on_the_run_page(admin_client, live, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    session = session_for(bundle)
    run = ask(session, tool("process", {"action": "list"}))
    wait_for_status(run, "awaiting_approval")
    url = reverse("admin:agent_sessions_run_change", args=[run.pk])
    shown = page(admin_client, url)
    assert 'value="Abort"' in shown and 'name="_save"' not in shown
    assert 'name="tool_calls-0-input"' not in shown

    pressed = admin_client.post(reverse("admin:agent_sessions_run_abort", args=[run.pk]), follow=True)
    assert pressed.status_code == 200
    run.refresh_from_db()
    assert run.status == "aborted" and ToolCall.objects.get(run=run).status == "denied"
    assert 'value="Abort"' not in page(admin_client, url)
    assert admin_client.get(reverse("admin:agent_sessions_run_abort", args=[run.pk])).status_code == 405
