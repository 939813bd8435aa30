"""Channel accounts, bindings and pairings in the Django admin: the token is write-only, settings are checked
by the accounts service, bindings pick only the tenant's agents, and pairings are approved by an action."""

import json

from django.urls import reverse

from channels_app.accounts import binding_create, channel_account_create, pairing_request
from channels_app.models import Binding, ChannelAccount, Pairing
from tenants.services import agent_create

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.admin-bot-token-tailXyZ9"


def account_form(bundle, **fields) -> dict:
    data = {
        "tenant": bundle.tenant.pk, "kind": "discord", "name": "admin bot", "agent": bundle.agent.pk,
        "token": TOKEN, "config": '{"dm_policy": "open"}', "enabled": "on",
    }
    return {**data, **fields}


def change_form(account, bindings=(), **fields) -> dict:
    """The change form's POST: the account's fields plus the bindings inline's formset."""
    data = {
        "name": account.name, "agent": account.agent_id, "token": "", "config": json.dumps(account.config),
        "enabled": "on" if account.enabled else "",
        "bindings-TOTAL_FORMS": len(bindings), "bindings-INITIAL_FORMS": sum(1 for b in bindings if b.get("id")),
        "bindings-MIN_NUM_FORMS": 0, "bindings-MAX_NUM_FORMS": 1000,
    }
    for index, binding in enumerate(bindings):
        for key, value in binding.items():
            data[f"bindings-{index}-{key}"] = value
        data[f"bindings-{index}-account"] = account.pk
    return {k: v for k, v in {**data, **fields}.items() if v != ""}


def test_adding_an_account_checks_it_like_the_api_and_never_shows_the_token(admin_client, tenant, make_tenant):
    add = reverse("admin:channels_app_channelaccount_add")
    bad = admin_client.post(add, account_form(tenant, config='{"dm_policy": "everyone"}'))
    assert bad.status_code == 200 and b"must be one of pairing, allowlist, open, disabled" in bad.content
    no_token = admin_client.post(add, account_form(tenant, token=""))
    assert no_token.status_code == 200 and b"must be the bot token" in no_token.content
    stranger = make_tenant()
    borrowed = admin_client.post(add, account_form(tenant, agent=stranger.agent.pk))
    assert borrowed.status_code == 200 and b"does not belong to tenant" in borrowed.content
    assert not ChannelAccount.objects.filter(tenant=tenant.tenant).exists()

    added = admin_client.post(add, account_form(tenant))
    assert added.status_code == 302, added.content[:3000]
    account = ChannelAccount.objects.get(tenant=tenant.tenant, name="admin bot")
    assert account.secret == TOKEN and account.config["dm_policy"] == "open" and account.config["queue_mode"] == "collect"

    duplicate = admin_client.post(add, account_form(tenant))
    assert duplicate.status_code == 200 and b"already exists" in duplicate.content

    for url in (reverse("admin:channels_app_channelaccount_changelist"),
                reverse("admin:channels_app_channelaccount_change", args=[account.pk])):
        page = admin_client.get(url)
        assert page.status_code == 200 and TOKEN.encode() not in page.content
    assert f"…{TOKEN[-4:]}".encode() in page.content


def test_editing_keeps_a_blank_token_and_scopes_agents_to_the_tenant(admin_client, tenant, make_tenant):
    account = channel_account_create(tenant=tenant.tenant, kind="discord", name="edit me", agent=tenant.agent, secret=TOKEN)
    helper = agent_create(tenant=tenant.tenant, slug="helper")
    stranger = make_tenant()
    url = reverse("admin:channels_app_channelaccount_change", args=[account.pk])

    page = admin_client.get(url).content.decode()
    assert f'value="{helper.pk}"' in page and f'value="{stranger.agent.pk}"' not in page

    borrowed = admin_client.post(url, change_form(account, agent=stranger.agent.pk))
    assert borrowed.status_code == 200 and "Select a valid choice" in borrowed.content.decode()
    bad = admin_client.post(url, change_form(account, config='{"guilds": {"abc": {}}}'))
    assert bad.status_code == 200 and b"is not a Discord guild id" in bad.content
    channel_account_create(tenant=tenant.tenant, kind="discord", name="taken", agent=tenant.agent, secret=TOKEN)
    taken = admin_client.post(url, change_form(account, name="taken"))
    assert taken.status_code == 200 and b"has a channel named" in taken.content

    kept = admin_client.post(url, change_form(account, agent=helper.pk, config='{"dm_policy": "allowlist", "allow_from": [42]}'))
    assert kept.status_code == 302, kept.content[:3000]
    account.refresh_from_db()
    assert account.secret == TOKEN and account.agent == helper and account.revision == 2
    assert account.config["dm_policy"] == "allowlist" and account.config["allow_from"] == ["42"]

    new_token = "ROTATED.token.value-for-admin-0000"
    assert admin_client.post(url, change_form(account, token=new_token)).status_code == 302
    account.refresh_from_db()
    assert account.secret == new_token
    assert new_token.encode() not in admin_client.get(url).content


def test_bindings_inline_goes_through_the_service(admin_client, tenant, make_tenant):
    account = channel_account_create(tenant=tenant.tenant, kind="discord", name="routed", agent=tenant.agent, secret=TOKEN)
    helper = agent_create(tenant=tenant.tenant, slug="helper")
    stranger = make_tenant()
    url = reverse("admin:channels_app_channelaccount_change", args=[account.pk])

    nothing = admin_client.post(url, change_form(account, [{"agent": helper.pk, "priority": 0}]))
    assert nothing.status_code == 200 and b"matches a guild_id, channel_id or peer_id" in nothing.content
    foreign = admin_client.post(url, change_form(account, [{"peer_id": "1", "agent": stranger.agent.pk, "priority": 0}]))
    assert foreign.status_code == 200 and b"Select a valid choice" in foreign.content
    assert not Binding.objects.filter(account=account).exists()

    added = admin_client.post(url, change_form(account, [{"guild_id": "123", "agent": helper.pk, "priority": 2}]))
    assert added.status_code == 302, added.content[:3000]
    binding = Binding.objects.get(account=account)
    assert (binding.guild_id, binding.agent, binding.priority) == ("123", helper, 2)

    changed = admin_client.post(url, change_form(account, [{"id": binding.pk, "channel_id": "456", "agent": tenant.agent.pk, "priority": 1}]))
    assert changed.status_code == 302
    binding.refresh_from_db()
    assert binding.match == {"channel_id": "456"} and binding.agent == tenant.agent

    removed = admin_client.post(url, change_form(account, [{"id": binding.pk, "channel_id": "456", "agent": tenant.agent.pk,
                                                            "priority": 1, "DELETE": "on"}]))
    assert removed.status_code == 302 and not Binding.objects.filter(account=account).exists()
    binding_create(account=account, agent=helper, peer_id="9")
    assert admin_client.get(url).status_code == 200


def test_pairings_are_listed_and_approved_by_the_action(admin_client, tenant):
    account = channel_account_create(tenant=tenant.tenant, kind="discord", name="paired", agent=tenant.agent, secret=TOKEN)
    alice = pairing_request(account=account, sender_id="1001", sender_name="Alice")
    bob = pairing_request(account=account, sender_id="1002", sender_name="Bob")
    changelist = reverse("admin:channels_app_pairing_changelist")
    page = admin_client.get(changelist, {"account__id__exact": account.pk})
    assert page.status_code == 200 and alice.code.encode() in page.content and b"Approve selected pairings" in page.content

    done = admin_client.post(changelist, {"action": "approve_pairings", "_selected_action": [alice.pk]}, follow=True)
    assert b"Approved 1 pairing(s)" in done.content
    assert Pairing.objects.get(pk=alice.pk).status == "approved" and Pairing.objects.get(pk=bob.pk).status == "pending"
    assert admin_client.get(reverse("admin:channels_app_pairing_change", args=[bob.pk])).status_code == 200
    assert admin_client.get(reverse("admin:channels_app_pairing_add")).status_code == 403


def test_the_add_page_renders(admin_client):
    page = admin_client.get(reverse("admin:channels_app_channelaccount_add"))
    assert page.status_code == 200 and b'type="password"' in page.content and b"bindings-TOTAL_FORMS" not in page.content


def test_approving_needs_the_change_permission(client, tenant):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    account = channel_account_create(tenant=tenant.tenant, kind="discord", name="viewed", agent=tenant.agent, secret=TOKEN)
    pairing = pairing_request(account=account, sender_id="2001")
    user = get_user_model().objects.create_user(username=f"viewer-{pairing.code}", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_pairing"))
    client.login(username=user.username, password="pw")
    changelist = reverse("admin:channels_app_pairing_changelist")
    assert pairing.code.encode() in client.get(changelist).content
    assert b"Approve selected pairings" not in client.get(changelist).content
    client.post(changelist, {"action": "approve_pairings", "_selected_action": [pairing.pk]})
    assert Pairing.objects.get(pk=pairing.pk).status == "pending"
