"""Every model's list and page open with data in them (never a 500), and the tenant page fits a laptop."""

import re

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from channels_app.accounts import channel_account_create, pairing_request
from channels_app.models import ChannelReply
from cron.models import CronRun
from cron.schedule import schedule_parse
from cron.services import cron_job_create
from sessions.models import Message, Run, ToolCall
from tenants.models import ApiKey
from tenants.services import agent_create
from tests.admin.helpers import page, session_for
from tests.skills.conftest import skill_md, zip_of
from tools.models import Approval
from tools.services import tool_invoke
from tools.skills import skill_upload

OURS = ("tenants", "agent_sessions", "tools", "cron", "channels_app")


@pytest.fixture
def filled(make_tenant):
    """One of everything the admin lists, in one tenant."""
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    session = session_for(bundle)
    run = Run.objects.create(tenant=bundle.tenant, session=session, status="succeeded", finished_at=timezone.now(),
                             input=[{"type": "text", "text": "hi"}])
    Message.objects.create(session=session, seq=1, role="user", run=run, content=[{"type": "text", "text": "hi"}])
    Message.objects.create(session=session, seq=2, role="assistant", run=run, step=0,
                           content=[{"type": "tool_use", "id": "toolu_x", "name": "process", "input": {"action": "list"}}])
    ToolCall.objects.create(run=run, step=0, tool_use_id="toolu_x", name="process", input={"action": "list"},
                            status="succeeded", output={"ok": True, "output": "none"})
    tool_invoke(tenant=bundle.tenant, agent=bundle.agent, tool="web_fetch", tool_input={"url": "http://10.255.0.1/"})
    skill_upload(tenant=bundle.tenant, data=zip_of({"SKILL.md": skill_md("audit", "Audits.")}))
    job = cron_job_create(tenant=bundle.tenant, agent=bundle.agent, name="hourly", prompt="tick",
                          schedule=schedule_parse({"kind": "cron", "expr": "0 * * * *"}, now=timezone.now()))
    CronRun.objects.create(job=job, tenant=bundle.tenant, scheduled_for=timezone.now(), trigger="beat", run=run,
                           status="succeeded", finished_at=timezone.now())
    account = channel_account_create(tenant=bundle.tenant, kind="discord", name="bot", agent=bundle.agent,
                                     secret="MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.render-bot-token-tailXyZ9",
                                     config={"dm_policy": "pairing"}, enabled=False)
    pairing_request(account=account, sender_id="3001", sender_name="Dana")
    ChannelReply.objects.create(tenant=bundle.tenant, run=run, kind="discord", target={"channel": "1"})
    return bundle


@pytest.mark.parametrize("model", [m for m in admin.site._registry if m._meta.app_label in OURS],
                         ids=lambda m: m._meta.label)
def test_list_and_page_render_with_data(admin_client, filled, model):
    opts = model._meta
    shown = page(admin_client, reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert "Select" in shown
    tenant_field = {"Message": "session__tenant", "ToolCall": "run__tenant", "Pairing": "account__tenant"}.get(
        model.__name__, "tenant")
    obj = model.objects.filter(**{tenant_field: filled.tenant}).first() if model.__name__ != "Tenant" else filled.tenant
    assert obj is not None, f"the fixture made no {opts.label}"
    page(admin_client, reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))


def test_the_tenant_page_lists_agents_in_a_compact_table(admin_client, tenant):
    agent_create(tenant=tenant.tenant, slug="researcher-with-a-long-name", model="claude-opus-4-1-20250805")
    shown = page(admin_client, reverse("admin:tenants_tenant_change", args=[tenant.tenant.pk]))
    agents = shown[shown.index('id="agents-group"'):shown.index('id="api_keys-group"')]
    headers = [h.strip().lower() for h in re.findall(r'<th class="column-(\w+)', agents)]
    assert headers == ["slug", "name", "provider", "model"]
    assert 'size="18"' in agents and "inlinechangelink" in agents
    assert ApiKey.objects.filter(tenant=tenant.tenant).exists()


def test_approval_page_of_a_filled_tenant_shows_the_buttons(admin_client, filled):
    approval = Approval.objects.get(tenant=filled.tenant)
    assert 'name="deny"' in page(admin_client, reverse("admin:tools_approval_change", args=[approval.pk]))
