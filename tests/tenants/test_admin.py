"""The Django admin is usable: every list renders with its columns, a session shows its transcript."""

import pytest
from django.urls import reverse

from sessions.models import AgentSession, Message, Run, ToolCall
from tenants.models import Agent, ApiKey, Tenant


@pytest.mark.parametrize("model", [Tenant, Agent, ApiKey, AgentSession, Run, Message, ToolCall])
def test_changelists_render_with_search_and_filters(admin_client, tenant, model):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(url, {"q": tenant.tenant.slug}).status_code == 200


def test_session_page_shows_the_transcript(admin_client, tenant):
    session = AgentSession.objects.create(tenant=tenant.tenant, agent=tenant.agent, key="agent:assistant:admin-view", next_seq=3)
    Message.objects.create(session=session, seq=1, role="user", content=[{"type": "text", "text": "what is up"}])
    Message.objects.create(session=session, seq=2, role="assistant", content=[{"type": "text", "text": "the sky"}])
    page = admin_client.get(reverse("admin:agent_sessions_agentsession_change", args=[session.pk]))
    assert page.status_code == 200
    assert b"what is up" in page.content and b"the sky" in page.content


def test_issuing_a_key_in_the_admin_shows_it_once(admin_client, tenant):
    response = admin_client.post(
        reverse("admin:tenants_apikey_add"), {"tenant": tenant.tenant.pk, "name": "ci", "scopes": ["read", "chat", "admin"]}, follow=True
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"] if "shown only this once" in str(m)]
    assert len(shown) == 1
    raw = shown[0].split(": ")[-1]
    assert ApiKey.objects.get(key_hash=ApiKey.hash_key(raw)).name == "ci"


def test_revoke_action(admin_client, tenant):
    key = ApiKey.objects.get(tenant=tenant.tenant)
    admin_client.post(reverse("admin:tenants_apikey_changelist"), {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_operator_sets_scopes_and_lifts_the_rate_limit(admin_client, tenant):
    key = ApiKey.objects.get(tenant=tenant.tenant)
    url = reverse("admin:tenants_apikey_change", args=[key.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b'type="checkbox" name="scopes" value="chat"' in page.content and b"rate_limit_per_minute" in page.content

    saved = admin_client.post(url, {"name": "front end", "scopes": ["chat", "read"], "rate_limit_per_minute": "0"})
    assert saved.status_code == 302, saved.content
    key.refresh_from_db()
    assert sorted(key.scopes) == ["chat", "read"] and key.rate_limit_per_minute == 0

    no_scope = admin_client.post(url, {"name": "front end", "rate_limit_per_minute": "0"})
    assert no_scope.status_code == 200 and b"This field is required" in no_scope.content


def test_issuing_a_narrow_key_in_the_admin(admin_client, tenant):
    admin_client.post(
        reverse("admin:tenants_apikey_add"),
        {"tenant": tenant.tenant.pk, "name": "reader", "scopes": ["read"], "rate_limit_per_minute": "30"},
    )
    key = ApiKey.objects.get(tenant=tenant.tenant, name="reader")
    assert key.scopes == ["read"] and key.rate_limit_per_minute == 30
