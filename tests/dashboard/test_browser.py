"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against the real stack: an
operator logs in, watches a run stream live, aborts one, approves a tool call and chats with an agent.
Screenshots of each screen land in <test log dir>/dashboard/.

The fake model streams slowly when asked (`[[deltas=N]]`, `[[delay_ms=M]]`), so a reply is seen growing.
"""

import json

import httpx
import pytest
from playwright.sync_api import expect

from sessions.models import Run
from tenants.models import Agent
from tests.conftest import wait_until
from tools.models import Approval

pytestmark = pytest.mark.timeout(180)


def start_run(live: str, bundle, content: str) -> str:
    """A message sent through the REST API, as any client would; the id of the run answering it."""
    with httpx.Client(base_url=f"{live}/api", headers=bundle.headers, timeout=30) as api:
        session_id = api.post("/sessions/", json={"agent": "assistant"}).json()["id"]
        response = api.post(f"/sessions/{session_id}/messages/", json={"content": content})
        assert response.status_code == 202, response.text
        return response.json()["run"]["id"]


def run_status(run_id: str) -> str:
    return Run.objects.values_list("status", flat=True).get(pk=run_id)


def test_watch_a_run_stream_live_from_the_runs_page(operator_page, live, tenant, fake_requests, screenshots):
    page = operator_page
    words = " ".join(f"word{i}" for i in range(30))
    run_id = start_run(live, tenant, f"{words} [[deltas=30]] [[delay_ms=200]]")

    row = page.locator(f'#live-runs tr[data-run="{run_id}"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text(tenant.tenant.slug)
    screenshots(page, "runs-live")

    row.get_by_role("link", name=run_id[:8]).click()
    page.wait_for_url(f"**/runs/{run_id}/")
    reply = page.locator("#reply")
    # Part of the reply is on the screen while the run is still streaming it.
    wait_until(lambda: reply.inner_text().startswith("Echo: word0") and run_status(run_id) == "running",
               timeout=20, message="the first words on the run page while the run streams")
    assert "word29" not in reply.inner_text()
    screenshots(page, "run-streaming")

    expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=30_000)
    expect(reply).to_have_text(f"Echo: {words}")
    expect(page.locator("#events")).to_contain_text("run.completed")
    expect(page.get_by_role("button", name="Abort run")).to_have_count(0)
    screenshots(page, "run-finished")

    page.get_by_role("link", name="Runs", exact=True).click()
    expect(page.locator(f'#recent-runs tr[data-run="{run_id}"]')).to_contain_text("Succeeded")
    expect(page.locator(f'#live-runs tr[data-run="{run_id}"]')).to_have_count(0)


def test_abort_a_run_from_its_page(operator_page, live, tenant, fake_requests, screenshots, operator):
    page = operator_page
    run_id = start_run(live, tenant, "a very long answer " * 20 + "[[deltas=80]] [[delay_ms=250]]")
    page.goto(f"/runs/{run_id}/")
    expect(page.locator("#reply")).to_contain_text("Echo: a very long answer")
    page.get_by_role("button", name="Abort run").click()

    expect(page.locator(".messages")).to_contain_text("Abort requested")
    expect(page.locator("#run-status")).to_have_text("Aborted", timeout=20_000)
    expect(page.locator("#run-facts")).to_contain_text(f"aborted by dashboard:{operator.username}")
    screenshots(page, "run-aborted")
    assert run_status(run_id) == "aborted"


def test_approve_a_tool_call_from_the_approvals_page(operator_page, live, make_tenant, fake_requests, screenshots, operator):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    page = operator_page
    # A private address: once allowed, web_fetch refuses it before connecting, and the run goes on.
    url = "http://10.255.0.1/dashboard-check"
    tool = json.dumps({"url": url})
    run_id = start_run(live, bundle, f"fetch it [[tool=web_fetch:{tool}]]")
    wait_until(lambda: run_status(run_id) == "awaiting_approval", timeout=20, message="the run to wait for approval")

    page.get_by_role("link", name="Approvals").click()
    page.get_by_label("Tenant").select_option(bundle.tenant.slug)
    card = page.locator("article.approval", has_text=bundle.tenant.slug)
    expect(card).to_have_count(1)
    expect(card.locator("pre.covered")).to_contain_text(url)
    expect(card).to_contain_text("“Approve always” adds web_fetch:=" + url)
    screenshots(page, "approvals-pending")

    card.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(".messages")).to_contain_text(f"Allowed: web_fetch {url}")
    expect(page.locator("article.approval", has_text=bundle.tenant.slug)).to_have_count(0)
    approval = Approval.objects.get(tenant=bundle.tenant)
    assert (approval.status, approval.decided_by) == ("allowed", f"dashboard:{operator.username}")

    page.goto(f"/runs/{run_id}/")
    expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=30_000)
    calls = page.locator("#tool-calls")
    expect(calls).to_contain_text("web_fetch")
    expect(calls).to_contain_text(f"by dashboard:{operator.username}")
    expect(calls).to_contain_text("refused to fetch")
    screenshots(page, "run-after-approval")

    # The session's transcript shows the call and its result, not blank turns.
    page.get_by_role("link", name=Run.objects.get(pk=run_id).session.key).first.click()
    transcript = page.locator("#transcript")
    expect(transcript.locator(".block.tool_use")).to_contain_text("tool call: web_fetch")
    expect(transcript.locator(".block.tool_use")).to_contain_text(url)
    expect(transcript.locator(".block.tool_result")).to_contain_text("refused to fetch")
    screenshots(page, "session-with-tools")


def test_approve_from_the_run_page_while_watching(operator_page, live, make_tenant, fake_requests, operator):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    page = operator_page
    tool = json.dumps({"url": "http://10.255.0.1/watched"})
    run_id = start_run(live, bundle, f"fetch [[tool=web_fetch:{tool}]]")
    page.goto(f"/runs/{run_id}/")
    # The page learns of the approval from the run's event stream and offers the decision in place.
    page.locator("#tool-calls").get_by_role("button", name="Deny").click()
    expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=30_000)
    expect(page.locator("#tool-calls")).to_contain_text("Denied")
    assert Approval.objects.get(tenant=bundle.tenant).decided_by == f"dashboard:{operator.username}"


def test_a_run_page_refreshed_without_changes_keeps_its_buttons_in_place(operator_page, live, make_tenant):
    # Opening the page replays the run's events, and its tool call and approval request each re-render the
    # tool calls from the server: the same markup both times. A button swapped for its copy under a click
    # loses the click (a Deny once went nowhere), so a region that has not changed stays as it is.
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    tool = json.dumps({"url": "http://10.255.0.1/unchanged"})
    run_id = start_run(live, bundle, f"fetch [[tool=web_fetch:{tool}]]")
    wait_until(lambda: run_status(run_id) == Run.Status.AWAITING_APPROVAL, timeout=30, message="the approval request")
    page = operator_page
    # Counts the refreshes whose answer the page has read; the page's own handler runs right after.
    page.add_init_script("""
        window.refreshesRead = 0;
        const fetchFirst = window.fetch;
        window.fetch = (...args) => fetchFirst(...args).then(response => {
            const readFirst = response.text.bind(response);
            response.text = () => readFirst().then(text => { window.refreshesRead += 1; return text; });
            return response;
        });
    """)
    page.goto(f"/runs/{run_id}/")
    deny = page.locator("#tool-calls").get_by_role("button", name="Deny")
    handle = deny.element_handle()
    page.wait_for_function("() => window.refreshesRead >= 2")
    assert handle.evaluate("button => button.isConnected"), "the button was swapped for a copy"
    deny.click()
    expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=30_000)


def test_chat_with_an_agent_from_a_new_session(operator_page, tenant, fake_requests, screenshots):
    page = operator_page
    page.get_by_role("link", name="Sessions").click()
    page.get_by_text("Start a new session").click()
    page.get_by_label("Agent").select_option(str(tenant.agent.pk))
    page.get_by_label("Key (optional)").fill("agent:assistant:from-the-dashboard")
    page.get_by_role("button", name="Start session").click()
    expect(page.locator("h1")).to_contain_text("agent:assistant:from-the-dashboard")

    words = " ".join(f"part{i}" for i in range(20))
    box = page.get_by_label("Message to assistant")
    box.fill(f"{words} [[deltas=20]] [[delay_ms=150]]")
    box.press("Control+Enter")
    reply = page.locator("#reply")
    expect(reply).to_contain_text("Echo: part0")
    assert "part19" not in reply.inner_text(), "the reply is shown while it streams, not at the end"
    screenshots(page, "chat-streaming")

    transcript = page.locator("#transcript")
    expect(transcript.locator(".msg.role-assistant")).to_contain_text(f"Echo: {words}", timeout=30_000)
    expect(transcript.locator(".msg.role-user")).to_contain_text("part19")
    expect(page.locator("#live-reply-box")).to_be_hidden()
    expect(box).to_be_focused()
    screenshots(page, "chat-done")

    box.fill("and once more")
    page.get_by_role("button", name="Send").click()
    expect(transcript.locator(".msg.role-assistant").nth(1)).to_contain_text("Echo: and once more", timeout=30_000)
    assert Agent.objects.get(pk=tenant.agent.pk).sessions.get(key="agent:assistant:from-the-dashboard").runs.count() == 2
