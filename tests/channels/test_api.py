"""/api/channels/ as a client uses it: accounts (the token write-only), bindings, DM pairings, tenant
scoping and validation; and `manage.py pairing`."""

import httpx
import pytest
from django.core.management import CommandError, call_command

from channels_app.accounts import pairing_request
from channels_app.models import Binding, ChannelAccount, Pairing
from tenants.models import ApiKey
from tenants.services import agent_create

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.discord-bot-token-tail9Zq"


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api/channels", headers=tenant.headers, timeout=10) as client:
        client.tenant = tenant
        yield client


def discord_body(**overrides) -> dict:
    body = {
        "kind": "discord", "name": "community bot", "agent": "assistant", "token": TOKEN, "dm_policy": "pairing",
        "allow_from": ["111111111111111111"], "guilds": {"222222222222222222": {"require_mention": True}},
    }
    return {**body, **overrides}


def test_discord_account_crud_never_shows_the_token(api):
    created = api.post("/", json=discord_body())
    assert created.status_code == 201, created.text
    account = created.json()
    assert account["kind"] == "discord" and account["agent"] == "assistant" and account["status"] == "new"
    assert account["token_hint"] == f"…{TOKEN[-4:]}" and account["enabled"] is True and account["last_error"] == ""
    assert account["dm_policy"] == "pairing" and account["allow_from"] == ["111111111111111111"]
    assert account["guilds"] == {"222222222222222222": {"require_mention": True}}
    assert account["approvers"] == [] and account["queue_mode"] == "collect"
    assert {"id", "created_at", "updated_at"} <= set(account) and "hook_url" not in account

    agent_create(tenant=api.tenant.tenant, slug="helper")
    changed = api.patch(f"/{account['id']}/", json={"dm_policy": "allowlist", "agent": "helper", "queue_mode": "followup"})
    assert changed.status_code == 200, changed.text
    after = changed.json()
    # Settings merge: what the PATCH did not name stays.
    assert after["dm_policy"] == "allowlist" and after["allow_from"] == ["111111111111111111"]
    assert after["guilds"] == account["guilds"] and after["agent"] == "helper" and after["queue_mode"] == "followup"
    row = ChannelAccount.objects.get(pk=account["id"])
    assert row.secret == TOKEN and row.revision == 2

    new_token = "NEWTOKEN.abcdef.ghijklmnopqrstuvwxyz0123"
    rotated = api.patch(f"/{account['id']}/", json={"token": new_token})
    assert rotated.json()["token_hint"] == "…0123" and ChannelAccount.objects.get(pk=account["id"]).secret == new_token

    listed = api.get("/")
    assert listed.json()["count"] == 1 and listed.json()["results"][0]["id"] == account["id"]
    fetched = api.get(f"/{account['id']}/")
    assert fetched.json()["name"] == "community bot"
    for response in (created, changed, rotated, listed, fetched):
        assert TOKEN not in response.text and new_token not in response.text and "secret" not in response.json()
    assert api.get("/", params={"kind": "webhook"}).json()["count"] == 0

    assert api.delete(f"/{account['id']}/").status_code == 204
    assert api.get(f"/{account['id']}/").status_code == 404
    assert not ChannelAccount.objects.filter(pk=account["id"]).exists()


def test_webhook_account_secret_is_shown_once(api):
    created = api.post("/", json={"kind": "webhook", "name": "crm", "agent": "assistant",
                                  "callback_url": "https://crm.example.com/beamclaw"})
    assert created.status_code == 201, created.text
    account = created.json()
    secret = account["secret"]
    assert secret == ChannelAccount.objects.get(pk=account["id"]).secret and len(secret) >= 32
    assert account["token_hint"] == f"…{secret[-4:]}"
    assert account["hook_url"] == f"{api.base_url.scheme}://{api.base_url.netloc.decode()}/hooks/{account['id']}"
    assert account["callback_url"] == "https://crm.example.com/beamclaw" and account["queue_mode"] == "followup"
    assert account["status"] == "connected", "a webhook endpoint takes messages as soon as it exists"
    assert "dm_policy" not in account
    for response in (api.get(f"/{account['id']}/"), api.get("/"), api.patch(f"/{account['id']}/", json={"callback_url": None})):
        assert response.status_code == 200 and secret not in response.text and "secret" not in response.json()
    assert api.get(f"/{account['id']}/").json()["callback_url"] is None

    chosen = api.post("/", json={"kind": "webhook", "name": "erp", "agent": "assistant", "secret": "s3cret-of-my-own-choosing"})
    assert chosen.status_code == 201 and "secret" not in chosen.json() and "s3cret" not in chosen.text


@pytest.mark.parametrize(
    "overrides, field, fragment",
    [
        ({"dm_policy": "everyone"}, "dm_policy", "Must be one of pairing, allowlist, open, disabled"),
        ({"guilds": {"my-guild": {}}}, "guilds", "'my-guild' is not a Discord guild id"),
        ({"guilds": {"1": {"require_mention": "yes"}}}, "guilds", "must be true or false"),
        ({"allow_from": ["12", "bob"]}, "allow_from", "'bob' is not a Discord id"),
        ({"agent": "nobody"}, "agent", "Unknown agent 'nobody'"),
        ({"token": ""}, "token", "must be the bot token"),
        ({"token": None}, "token", "may not be null"),
        ({"name": "bad/name"}, "name", "letters, digits"),
        ({"kind": "irc"}, "kind", "not a valid choice"),
        ({"callback_url": "https://x.example"}, "callback_url", "Unknown Discord setting"),
        ({"tokne": "x"}, "tokne", "Unknown field"),
        ({"queue_mode": "later"}, "queue_mode", "not a valid choice"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api, overrides, field, fragment):
    body = discord_body(**overrides)
    if overrides.get("token") is None and "token" in overrides:
        body["token"] = None
    response = api.post("/", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid" and fragment in " ".join(error[field]), error
    assert not ChannelAccount.objects.filter(tenant=api.tenant.tenant).exists()


def test_duplicate_name_is_a_409_and_kind_cannot_change(api):
    account = api.post("/", json=discord_body()).json()
    duplicate = api.post("/", json=discord_body())
    assert duplicate.status_code == 409 and "exists already" in duplicate.json()["detail"]
    other = api.post("/", json=discord_body(name="second")).json()
    renamed = api.patch(f"/{other['id']}/", json={"name": "community bot"})
    assert renamed.status_code == 409 and duplicate.json()["code"] == "conflict"
    assert api.patch(f"/{account['id']}/", json={"kind": "webhook"}).json()["kind"] == [
        "A channel's kind cannot change; create a new channel instead."
    ]
    # What GET returned may be sent back as it is.
    echoed = api.patch(f"/{account['id']}/", json=api.get(f"/{account['id']}/").json())
    assert echoed.status_code == 200, echoed.text
    bad = api.patch(f"/{account['id']}/", json={"guilds": {"1": {"channels": ["general"]}}})
    assert bad.status_code == 400 and "'general' is not a Discord id" in bad.json()["guilds"][0]


def test_another_tenants_accounts_bindings_and_codes_do_not_exist(live, api, make_tenant):
    other = make_tenant()
    theirs = httpx.post(f"{live}/api/channels/", headers=other.headers, json=discord_body()).json()
    binding = httpx.post(
        f"{live}/api/channels/{theirs['id']}/bindings/", headers=other.headers,
        json={"match": {"peer_id": "333"}, "agent": "assistant"},
    ).json()
    code = pairing_request(account=ChannelAccount.objects.get(pk=theirs["id"]), sender_id="444").code
    for method, path, body in [
        ("GET", "", None), ("PATCH", "", {"name": "mine"}), ("DELETE", "", None), ("GET", "pairing/", None),
        ("POST", "pairing/approve", {"code": code}), ("GET", "bindings/", None),
        ("POST", "bindings/", {"match": {"peer_id": "1"}, "agent": "assistant"}),
        ("GET", f"bindings/{binding['id']}/", None), ("PATCH", f"bindings/{binding['id']}/", {"priority": 3}),
        ("DELETE", f"bindings/{binding['id']}/", None),
    ]:
        response = api.request(method, f"/{theirs['id']}/{path}", json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["detail"] == "Channel account not found."
    assert api.get("/").json()["count"] == 0
    assert Binding.objects.filter(pk=binding["id"], priority=0).exists()
    assert Pairing.objects.get(code=code).status == "pending"

    # A binding of another account of mine is not found under this one either.
    mine = api.post("/", json=discord_body()).json()
    response = api.get(f"/{mine['id']}/bindings/{binding['id']}/")
    assert response.status_code == 404 and response.json()["detail"] == "Binding not found."
    # Nor is another tenant's code through my account.
    stolen = api.post(f"/{mine['id']}/pairing/approve/", json={"code": code})
    assert stolen.status_code == 404 and "No pending pairing with code" in stolen.json()["detail"]
    assert Pairing.objects.get(code=code).status == "pending"
    assert httpx.get(f"{live}/api/channels/").status_code == 401


def test_pairing_list_and_approve(api):
    account = api.post("/", json=discord_body()).json()
    row = ChannelAccount.objects.get(pk=account["id"])
    first = pairing_request(account=row, sender_id="555", sender_name="Alice")
    second = pairing_request(account=row, sender_id="666")
    pending = api.get(f"/{account['id']}/pairing/").json()
    assert pending["count"] == 2
    assert [(p["code"], p["sender_id"], p["sender_name"], p["status"]) for p in pending["results"]] == [
        (first.code, "555", "Alice", "pending"), (second.code, "666", "", "pending"),
    ]
    assert {"expires_at", "created_at"} <= set(pending["results"][0])

    approved = api.post(f"/{account['id']}/pairing/approve", json={"code": first.code.lower()})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["approved_at"]
    assert [p["code"] for p in api.get(f"/{account['id']}/pairing/").json()["results"]] == [second.code]
    again = api.post(f"/{account['id']}/pairing/approve/", json={"code": first.code})
    assert again.status_code == 404 and again.json()["code"] == "not_found" and "codes last an hour" in again.json()["detail"]
    malformed = api.post(f"/{account['id']}/pairing/approve/", json={"code": "12-34"})
    assert malformed.status_code == 400 and "8 letters and digits" in malformed.json()["code"][0]
    assert api.post(f"/{account['id']}/pairing/approve/", json={}).status_code == 400


def test_bindings_crud(api):
    account = api.post("/", json=discord_body()).json()
    agent_create(tenant=api.tenant.tenant, slug="support")
    base = f"/{account['id']}/bindings/"
    created = api.post(base, json={"match": {"guild_id": "222222222222222222", "channel_id": "777"}, "agent": "support", "priority": 5})
    assert created.status_code == 201, created.text
    binding = created.json()
    assert binding["match"] == {"guild_id": "222222222222222222", "channel_id": "777"}
    assert binding["agent"] == "support" and binding["priority"] == 5 and {"id", "created_at"} <= set(binding)
    peer = api.post(base, json={"match": {"peer_id": "888"}, "agent": "assistant"}).json()
    assert [b["id"] for b in api.get(base).json()["results"]] == [binding["id"], peer["id"]]
    assert api.get(f"{base}{binding['id']}/").json() == binding

    moved = api.patch(f"{base}{binding['id']}/", json={"match": {"peer_id": "999"}, "priority": 7})
    assert moved.status_code == 200, moved.text
    assert moved.json()["match"] == {"peer_id": "999"} and moved.json()["priority"] == 7 and moved.json()["agent"] == "support"
    assert api.patch(f"{base}{binding['id']}/", json={"agent": "assistant"}).json()["match"] == {"peer_id": "999"}

    for body, field, fragment in [
        ({"match": {}, "agent": "assistant"}, "match", "matches a guild_id, channel_id or peer_id"),
        ({"match": {"peer_id": "a b"}, "agent": "assistant"}, "peer_id", "must be a platform id"),
        ({"match": {"peer_id": "1"}, "agent": "nobody"}, "agent", "Unknown agent 'nobody'"),
        ({"match": {"user": "1"}, "agent": "assistant"}, "match", "Unknown key(s) user"),
        ({"match": {"peer_id": "1"}, "agent": "assistant", "priority": 10**9}, "priority", "less than or equal"),
    ]:
        response = api.post(base, json=body)
        assert response.status_code == 400, (body, response.text)
        assert fragment in " ".join(response.json()[field]), response.json()

    assert api.delete(f"{base}{peer['id']}/").status_code == 204
    assert api.get(f"{base}{peer['id']}/").status_code == 404
    assert api.get(base).json()["count"] == 1


def test_changing_channels_needs_the_admin_scope(live, api):
    account = api.post("/", json=discord_body()).json()
    code = pairing_request(account=ChannelAccount.objects.get(pk=account["id"]), sender_id="1").code
    ApiKey.objects.filter(tenant=api.tenant.tenant).update(scopes=["read", "chat"])
    assert api.get(f"/{account['id']}/pairing/").status_code == 200
    for method, path, body in [("POST", "/", discord_body(name="x")), ("PATCH", f"/{account['id']}/", {}),
                               ("POST", f"/{account['id']}/pairing/approve/", {"code": code})]:
        response = api.request(method, path, json=body)
        assert response.status_code == 403 and response.json()["required_scope"] == "admin", (method, path)


def test_pairing_command_lists_and_approves(tenant, make_tenant, capsys):
    account = ChannelAccount.objects.create(tenant=tenant.tenant, kind="discord", name="cli bot", agent=tenant.agent, secret=TOKEN)
    pairing = pairing_request(account=account, sender_id="123", sender_name="Bob")
    other = make_tenant()

    call_command("pairing", "list", "--tenant", tenant.tenant.slug)
    out = capsys.readouterr().out
    assert "TENANT" in out and tenant.tenant.slug in out and "cli bot" in out and "Bob (123)" in out and pairing.code in out
    call_command("pairing", "list", "--tenant", other.tenant.slug)
    assert capsys.readouterr().out.strip() == "No pending pairing codes."

    with pytest.raises(CommandError, match="No pending pairing with code"):
        call_command("pairing", "approve", pairing.code, "--tenant", other.tenant.slug)
    with pytest.raises(CommandError, match="No tenant 'nope'"):
        call_command("pairing", "approve", pairing.code, "--tenant", "nope")
    call_command("pairing", "approve", pairing.code.lower(), "--tenant", tenant.tenant.slug)
    assert "Approved Bob (123)" in capsys.readouterr().out
    assert Pairing.objects.get(pk=pairing.pk).status == "approved"
    with pytest.raises(CommandError, match="No pending pairing with code"):
        call_command("pairing", "approve", pairing.code)
