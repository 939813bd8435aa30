"""Discord end to end: the real discord.py client in `manage.py run_discord` against the fake Discord
(tests/fakes/discord_server.py), the real worker answering through the fake model (which echoes), and the
replies posted by the Discord transport. Accounts are created while `run_discord` runs, so each test also
shows that a new account is picked up without a restart (production reload interval, 5 s)."""

import re
import uuid
from datetime import datetime

import httpx
import pytest
from django.db.models import F

from channels_app import accounts
from channels_app.models import ChannelAccount, ChannelReply
from sessions.models import AgentSession, Run
from tenants.models import Agent
from tests.channels.discord_world import FakeDiscord, start_run_discord, user
from tests.conftest import wait_until
from tests.cron.test_api import job_body
from tests.cron.test_delivery import delivered
from tools.models import Approval

CONNECT_TIMEOUT = 30  # the reload interval, a login and a gateway handshake


@pytest.fixture(scope="module")
def run_discord(service_env, log_dir, worker):
    proc = start_run_discord(service_env, log_dir)
    yield proc
    proc.stop()


@pytest.fixture
def world(fake_discord, run_discord) -> FakeDiscord:
    return FakeDiscord(fake_discord)


def connect(world: FakeDiscord, bundle, **config) -> tuple[ChannelAccount, dict]:
    bot = world.bot()
    account = accounts.channel_account_create(
        tenant=bundle.tenant, kind="discord", name=f"bot-{uuid.uuid4().hex[:6]}", agent=bundle.agent,
        secret=bot["token"], config=config,
    )
    wait_until(lambda: ChannelAccount.objects.get(pk=account.pk).status == "connected", timeout=CONNECT_TIMEOUT,
               message="the bot to connect")
    return account, bot


def replies(world: FakeDiscord, channel_id: str, count: int) -> list[str]:
    return [m["content"] for m in world.wait_sent(channel_id, count)]


def test_pairing_end_to_end(world, tenant, run_discord):
    account, bot = connect(world, tenant)  # dm_policy defaults to pairing
    stranger = user("stranger")
    first = world.say(stranger, "hello bot", dm_bot=bot)
    [code_message] = replies(world, first["channel_id"], 1)
    code = re.search(r"\*\*([A-Z0-9]{8})\*\*", code_message).group(1)
    again = world.say(stranger, "are you there?", dm_bot=bot)  # the same code is not sent again, nothing runs
    # Handled before the approval below, or it would (rightly) run once approved.
    wait_until(lambda: f"DM {again['id']} from {stranger['id']} waits for pairing (code already sent)"
               in run_discord.log_path.read_text(), timeout=30, message="the bot to turn the second DM away")

    pending = list(accounts.pairings_pending(account=account))
    assert [(p.sender_id, p.code) for p in pending] == [(stranger["id"], code)]
    accounts.pairing_approve(code=code, tenant=tenant.tenant)

    after = world.say(stranger, "now we can talk", dm_bot=bot)
    sent = world.wait_sent(first["channel_id"], 2)
    assert sent[1]["content"] == "Echo: now we can talk"
    assert sent[1]["message_reference"]["message_id"] == after["id"], "the answer replies to the user's message"
    session = AgentSession.objects.get(tenant=tenant.tenant, key=f"agent:assistant:discord:dm:{stranger['id']}")
    assert [r.input for r in Run.objects.filter(session=session)] == [[{"type": "text", "text": "now we can talk"}]]
    assert len(world.sent(first["channel_id"])) == 2, "one code, one answer"


def test_allowlist_only_lets_listed_users_in(world, tenant):
    friend, stranger = user("friend"), user("stranger")
    _, bot = connect(world, tenant, dm_policy="allowlist", allow_from=[friend["id"]])
    ignored = world.say(stranger, "let me in", dm_bot=bot)
    answered = world.say(friend, "hi", dm_bot=bot)
    assert replies(world, answered["channel_id"], 1) == ["Echo: hi"]
    assert world.typing(answered["channel_id"]), "the bot was typing while the run worked"
    assert world.sent(ignored["channel_id"]) == [], "no code and no answer under allowlist"
    assert not AgentSession.objects.filter(key__endswith=stranger["id"]).exists()


def test_guild_messages_need_a_mention_in_a_configured_guild(world, tenant):
    bot = world.bot()
    guild = world.guild([bot], channels=2)
    other_guild = world.guild([bot], channels=1)
    listed, unlisted = guild["channels"][0]["id"], guild["channels"][1]["id"]
    account = accounts.channel_account_create(
        tenant=tenant.tenant, kind="discord", name="guild-bot", agent=tenant.agent, secret=bot["token"],
        config={"guilds": {guild["id"]: {"require_mention": True, "channels": [listed]}}},
    )
    wait_until(lambda: ChannelAccount.objects.get(pk=account.pk).status == "connected", timeout=CONNECT_TIMEOUT, message="connect")
    person = user()
    world.say(person, "no mention here", channel_id=listed)
    world.say(person, f"<@{bot['id']}> wrong channel", channel_id=unlisted, mentions=[bot])
    world.say(person, f"<@{bot['id']}> wrong guild", channel_id=other_guild["channels"][0]["id"], mentions=[bot])
    world.say({**user("another-bot"), "bot": True}, f"<@{bot['id']}> I am a bot", channel_id=listed, mentions=[bot])
    world.say(person, f"<@{bot['id']}> what is up", channel_id=listed, mentions=[bot])
    assert replies(world, listed, 1) == ["Echo: what is up"], "the mention is taken out of the prompt"
    bot_message = world.sent(listed)[0]
    world.say(person, "a reply to the bot counts as a mention", channel_id=listed, reply_to=bot_message["id"])
    assert replies(world, listed, 2)[1] == "Echo: a reply to the bot counts as a mention"
    session = AgentSession.objects.get(tenant=tenant.tenant, key=f"agent:assistant:discord:channel:{listed}")
    assert Run.objects.filter(session__tenant=tenant.tenant).count() == 2 == Run.objects.filter(session=session).count()
    assert world.sent(unlisted) == [] and world.sent(other_guild["channels"][0]["id"]) == []


def test_the_most_specific_binding_answers(world, make_tenant):
    bundle = make_tenant()
    agents = {slug: Agent.objects.create(tenant=bundle.tenant, slug=slug, model=bundle.agent.model)
              for slug in ("guild-agent", "channel-agent", "peer-agent")}
    bot = world.bot()
    guild = world.guild([bot], channels=2)
    general, special = guild["channels"][0]["id"], guild["channels"][1]["id"]
    vip, regular = user("vip"), user("regular")
    account = accounts.channel_account_create(
        tenant=bundle.tenant, kind="discord", name="routed", agent=bundle.agent, secret=bot["token"],
        config={"guilds": {guild["id"]: {"require_mention": False}}, "dm_policy": "open"},
    )
    accounts.binding_create(account=account, agent=agents["guild-agent"], guild_id=guild["id"])
    accounts.binding_create(account=account, agent=agents["channel-agent"], channel_id=special)
    accounts.binding_create(account=account, agent=agents["peer-agent"], peer_id=vip["id"])
    wait_until(lambda: ChannelAccount.objects.get(pk=account.pk).status == "connected", timeout=CONNECT_TIMEOUT, message="connect")

    world.say(regular, "in general", channel_id=general)
    world.say(regular, "in special", channel_id=special)
    replies(world, general, 1), replies(world, special, 1)
    dm = world.say(regular, "a dm", dm_bot=bot)
    replies(world, dm["channel_id"], 1)
    vip_dm = world.say(vip, "vip dm", dm_bot=bot)
    replies(world, vip_dm["channel_id"], 1)
    keys = set(AgentSession.objects.filter(tenant=bundle.tenant).values_list("key", flat=True))
    assert keys == {
        f"agent:guild-agent:discord:channel:{general}", f"agent:channel-agent:discord:channel:{special}",
        f"agent:assistant:discord:dm:{regular['id']}", f"agent:peer-agent:discord:dm:{vip['id']}",
    }


def test_a_long_reply_is_split_in_order_without_breaking_code_fences(world, make_tenant):
    _, bot = connect(world, make_tenant(), dm_policy="open")
    code = "\n".join(f"line {i:04d} = compute({i})" for i in range(150))
    text = "Here is the program:\n```python\n" + code + "\n```\nAnd some closing words. " + "bla " * 400
    assert len(text) > 5000
    message = world.say(user(), text, dm_bot=bot)
    reply = ChannelReply.objects.filter(run__session__key__endswith=message["author"]["id"])
    wait_until(lambda: reply.filter(status="delivered").exists(), timeout=30, message="the reply")
    pieces = [m["content"] for m in world.sent(message["channel_id"])]
    assert len(pieces) == 3 and all(len(p) <= 2000 for p in pieces)
    assert all(p.count("```") % 2 == 0 for p in pieces), "every piece renders its code block closed"
    joined = "\n".join(pieces)
    assert [int(n) for n in re.findall(r"line (\d{4}) =", joined)] == list(range(150)), "in order, each line once"
    assert joined.replace("```\n```python\n", "").replace("\n", "").replace(" ", "") == ("Echo: " + text).replace("\n", "").replace(" ", "")


def test_a_dropped_gateway_connection_loses_and_repeats_nothing(world, tenant):
    _, bot = connect(world, tenant, dm_policy="open")
    person = user()
    first = world.say(person, "before the drop", dm_bot=bot)
    replies(world, first["channel_id"], 1)
    resumes = world.connection(bot).get("resumes", 0)
    world.drop(bot, reconnect_delay=2)  # long enough for the next message to come while it is away
    world.say(person, "while it was away", dm_bot=bot)
    assert not world.connection(bot)["connected"]
    wait_until(lambda: world.connection(bot).get("resumes", 0) > resumes, timeout=60, message="a resume")
    assert replies(world, first["channel_id"], 2)[1] == "Echo: while it was away"
    world.say(person, "after", dm_bot=bot)
    assert replies(world, first["channel_id"], 3)[2] == "Echo: after"
    assert [m["content"] for m in world.sent(first["channel_id"])] == [
        "Echo: before the drop", "Echo: while it was away", "Echo: after"]


def test_a_bad_token_marks_its_account_and_spares_the_others(world, tenant):
    _, good_bot = connect(world, tenant, dm_policy="open")
    bad = accounts.channel_account_create(tenant=tenant.tenant, kind="discord", name="bad", agent=tenant.agent,
                                          secret="not-a-registered-token", config={"dm_policy": "open"})
    bad = wait_until(lambda: ChannelAccount.objects.filter(pk=bad.pk, status="error").first(), timeout=CONNECT_TIMEOUT,
                     message="the bad account's error")
    assert "refused the bot token" in bad.last_error
    message = world.say(user(), "still here?", dm_bot=good_bot)
    assert replies(world, message["channel_id"], 1) == ["Echo: still here?"]


def test_a_disabled_account_disconnects(world, tenant):
    account, bot = connect(world, tenant, dm_policy="open")
    accounts.channel_account_update(account=account, enabled=False)
    wait_until(lambda: not world.connection(bot).get("connected"), timeout=CONNECT_TIMEOUT, message="the bot to leave")
    assert ChannelAccount.objects.get(pk=account.pk).status == "disabled"


def test_tool_approvals_by_button(world, make_tenant):
    bundle = make_tenant(approval={"mode": "always", "allowlist": []})
    approver, asker = user("approver"), user("asker")
    account, bot = connect(world, bundle, dm_policy="open", approvers=[approver["id"]])
    question = world.say(asker, '[[tool=process:{"action": "list"}]] what runs?', dm_bot=bot)
    approval = wait_until(lambda: Approval.objects.filter(tenant=bundle.tenant, status="pending").first(), timeout=30,
                          message="the approval")
    prompt = wait_until(lambda: next((m for m in world.sent_by(bot) if m.get("components")), None), timeout=30,
                        message="the approval prompt")
    assert prompt["channel_id"] != question["channel_id"], "the prompt goes to the approver, not the asker"
    assert '`process`' in prompt["content"] and '"action": "list"' in prompt["content"], "the exact input is shown"
    buttons = [c for row in prompt["components"] for c in row["components"]]
    assert [b["label"] for b in buttons] == ["Approve", "Deny"]
    world.click(prompt["id"], buttons[0]["custom_id"], asker)  # not an approver: nothing happens
    assert Approval.objects.get(pk=approval.pk).status == "pending"
    world.click(prompt["id"], buttons[0]["custom_id"], approver)
    wait_until(lambda: Approval.objects.get(pk=approval.pk).status == "allowed", timeout=15, message="the decision")
    assert Approval.objects.get(pk=approval.pk).decided_by.startswith(f"discord:{approver['id']}")
    assert replies(world, question["channel_id"], 1) == ["Tool results: no background processes"]
    [edited] = [m for m in world.sent_by(bot) if m["id"] == prompt["id"]]
    assert f"Approved by <@{approver['id']}>" in edited["edits"][-1]["content"]
    assert "Unanswered" not in edited["edits"][-1]["content"]
    assert not edited["edits"][-1]["components"], "the buttons are gone once decided"


def test_a_rate_limited_reply_waits_for_discord_and_posts_once(world, tenant):
    bot = world.bot()
    guild = world.guild([bot], channels=1)
    channel = guild["channels"][0]["id"]
    account = accounts.channel_account_create(
        tenant=tenant.tenant, kind="discord", name="limited", agent=tenant.agent, secret=bot["token"],
        config={"guilds": {guild["id"]: {"require_mention": False}}},
    )
    wait_until(lambda: ChannelAccount.objects.get(pk=account.pk).status == "connected", timeout=CONNECT_TIMEOUT, message="connect")
    world.ratelimit(channel, count=1, retry_after=1.5)
    world.say(user(), "busy?", channel_id=channel)
    reply = wait_until(lambda: ChannelReply.objects.filter(run__session__key__endswith=channel, status="delivered").first(),
                       timeout=30, message="the reply")
    assert reply.attempts == 2, "the 429 was one attempt, the next one after Discord's retry_after went through"
    assert [m["content"] for m in world.sent(channel)] == ["Echo: busy?"]
    posts = [r["status"] for r in world.requests() if r["path"].endswith(f"/channels/{channel}/messages")]
    assert posts == [429, 200]


def test_settings_changed_while_running_apply_without_a_restart(world, tenant):
    account, bot = connect(world, tenant, dm_policy="disabled")
    person = user()
    ignored = world.say(person, "hello?", dm_bot=bot)
    identifies = world.connection(bot)["identifies"]
    account = accounts.channel_account_update(account=account, config={"dm_policy": "open"})
    wait_until(lambda: ChannelAccount.objects.get(pk=account.pk).status == "connected", timeout=CONNECT_TIMEOUT,
               message="the bot to run the new settings")
    world.say(person, "and now?", dm_bot=bot)
    assert replies(world, ignored["channel_id"], 1) == ["Echo: and now?"], "DMs were disabled before the change"
    assert world.connection(bot)["identifies"] == identifies, "the bot kept its connection"


def test_cron_delivers_to_a_discord_channel_and_to_a_users_dm(world, live, tenant):
    bot = world.bot()
    channel = world.guild([bot], channels=1)["channels"][0]["id"]
    account = accounts.channel_account_create(tenant=tenant.tenant, kind="discord", name="reports", agent=tenant.agent,
                                              secret=bot["token"])
    boss = user("boss")
    with httpx.Client(base_url=f"{live}/api/cron", headers=tenant.headers, timeout=30) as api:
        for to, prompt in [(channel, "nightly digest"), (boss["id"], "personal digest")]:
            job = api.post("/jobs/", json=job_body(name=prompt, prompt=prompt, session_target="isolated",
                                                   deliver={"kind": "channel", "channel": account.pk, "to": to}))
            assert job.status_code == 201, job.text
            cron_run = api.post(f"/jobs/{job.json()['id']}/run/").json()["id"]
            outcome = delivered(cron_run, timeout=30)
            assert (outcome.delivery_status, outcome.delivery_error) == ("delivered", "")
    assert [m["content"] for m in world.sent(channel)] == ["Echo: nightly digest"]
    [dm] = [m for m in world.sent_by(bot) if m["channel_id"] != channel]
    assert dm["content"] == "Echo: personal digest"


def test_a_change_whose_notice_was_lost_is_picked_up_by_the_periodic_reload(world, tenant):
    account, bot = connect(world, tenant, dm_policy="open")
    # A bare UPDATE sends no signal, as if the notice had been lost while Redis was away.
    ChannelAccount.objects.filter(pk=account.pk).update(enabled=False, revision=F("revision") + 1)
    wait_until(lambda: not world.connection(bot).get("connected"), timeout=CONNECT_TIMEOUT,
               message="the bot to leave at the next periodic reload (every 5 s)")


def test_a_streamed_reply_is_previewed_in_one_message_edited_at_most_once_a_second(world, tenant):
    _, bot = connect(world, tenant, dm_policy="open", stream=True)
    question = world.say(user(), "[[deltas=6]][[delay_ms=400]] one two three four five six", dm_bot=bot)
    final = replies(world, question["channel_id"], 2)[-1]  # the preview first, then the reply itself
    wait_until(lambda: world.sent(question["channel_id"])[0]["deleted"], timeout=15, message="the preview to go")
    preview, reply = world.sent(question["channel_id"])
    assert final == reply["content"] == "Echo: one two three four five six"
    assert reply["message_reference"]["message_id"] == question["id"] and not reply["deleted"]
    shown = [edit["content"] for edit in preview["edits"]]  # what each edit showed (the fake keeps no first text)
    assert shown and all(text.endswith(" ▌") for text in shown), "written as it came, in one message"
    assert all(len(a) < len(b) for a, b in zip(shown, shown[1:])), "each edit shows more of the reply"
    stamps = [datetime.fromisoformat(preview["timestamp"])] + [
        datetime.fromisoformat(edit["edited_timestamp"]) for edit in preview["edits"]]
    assert all((b - a).total_seconds() >= 0.9 for a, b in zip(stamps, stamps[1:])), "at most one edit a second"
