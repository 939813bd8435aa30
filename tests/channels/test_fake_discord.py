"""The fake Discord (tests/fakes/discord_server.py) against the real discord.py client: a bot logs in,
receives guild messages and DMs, replies, types, survives a dropped gateway and answers a button click."""

import asyncio
import os
import sys
import threading
import time
import uuid

import discord
import httpx
import pytest
import yarl

from tests.conftest import wait_until
from tests.procs import Process, free_port


@pytest.fixture(scope="module")
def fake(fake_discord):
    """A control client for the fake, with discord.py pointed at it the way production points it."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = f"{fake_discord}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake_discord.replace("http://", "ws://") + "/gateway/")
    with httpx.Client(base_url=fake_discord, timeout=10) as client:
        yield client
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


def post(fake: httpx.Client, path: str, body: dict) -> dict:
    response = fake.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


class LiveBot:
    """A real discord.Client running on an event loop in a thread of its own, recording what it receives."""

    def __init__(self, token: str):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.messages: list[discord.Message] = []
        self.answered: list[discord.Interaction] = []
        self.errors: list[BaseException] = []
        self.ready = threading.Event()
        intents = discord.Intents.default()
        intents.message_content = True
        # on_ready waits guild_ready_timeout after the last GUILD_CREATE; 2 s by default.
        self.client = self.call(self._make_client(intents))
        self.running = asyncio.run_coroutine_threadsafe(self.client.start(token), self.loop)

    async def _make_client(self, intents):
        client = discord.Client(intents=intents, guild_ready_timeout=0.1)

        @client.event
        async def on_ready():
            self.ready.set()

        @client.event
        async def on_message(message):
            if message.author != client.user:
                self.messages.append(message)

        @client.event
        async def on_interaction(interaction):
            try:
                await interaction.response.send_message(f"pressed {interaction.data['custom_id']}", ephemeral=True)
            except Exception as exc:  # handed to the test thread, which fails on it
                self.errors.append(exc)
            else:
                self.answered.append(interaction)

        return client

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def received(self, content: str) -> list[discord.Message]:
        return [m for m in self.messages if m.content == content]

    def wait_for_message(self, content: str) -> discord.Message:
        return wait_until(lambda: self.received(content), timeout=5, message=f"a message {content!r}")[0]

    def close(self):
        self.call(self.client.close())
        self.running.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def world(fake):
    token = f"token-{uuid.uuid4().hex}"
    bot = post(fake, "/_fake/bots", {"token": token, "username": "beamclaw"})
    guild = post(fake, "/_fake/guilds", {"name": "Test Guild", "channels": [{"name": "general"}], "bots": [bot["id"]]})
    live = LiveBot(token)
    assert live.ready.wait(10), "on_ready did not fire"
    yield {"bot": bot, "guild": guild, "channel_id": guild["channels"][0]["id"], "live": live}
    live.close()


def test_on_ready_the_bot_sees_its_guild_and_may_talk_there(world):
    client = world["live"].client
    assert client.user.id == int(world["bot"]["id"]) and client.user.bot
    guild = client.get_guild(int(world["guild"]["id"]))
    assert guild is not None and guild.name == "Test Guild"
    channel = guild.get_channel(int(world["channel_id"]))
    assert channel.name == "general"
    assert channel.permissions_for(guild.me).send_messages


def test_a_guild_message_and_a_dm_reach_on_message(fake, world):
    bot_id = world["bot"]["id"]
    post(
        fake,
        "/_fake/messages",
        {
            "channel_id": world["channel_id"],
            "author": {"id": "100000000000000001", "username": "alice"},
            "content": f"<@{bot_id}> hello",
            "mentions": [bot_id],
        },
    )
    message = world["live"].wait_for_message(f"<@{bot_id}> hello")
    assert message.author.name == "alice" and message.author.id == 100000000000000001
    assert message.guild.id == int(world["guild"]["id"])
    assert world["live"].client.user in message.mentions

    post(
        fake,
        "/_fake/messages",
        {"dm": {"bot_id": bot_id}, "author": {"id": "100000000000000002", "username": "bob"}, "content": "psst"},
    )
    dm = world["live"].wait_for_message("psst")
    assert dm.guild is None and isinstance(dm.channel, discord.DMChannel) and dm.author.name == "bob"


def test_a_reply_carries_a_message_reference_and_an_over_long_post_is_refused(fake, world):
    live, channel_id = world["live"], world["channel_id"]
    asked = post(
        fake,
        "/_fake/messages",
        {"channel_id": channel_id, "author": {"id": "100000000000000001", "username": "alice"}, "content": "question?"},
    )
    reply = live.call(live.wait_for_message("question?").reply("answer"))
    assert reply.reference.message_id == int(asked["id"])
    sent = fake.get("/_fake/sent", params={"channel_id": channel_id}).json()
    assert sent[-1]["content"] == "answer" and sent[-1]["type"] == 19
    assert sent[-1]["message_reference"]["message_id"] == asked["id"]

    channel = live.client.get_channel(int(channel_id))
    with pytest.raises(discord.HTTPException) as refused:
        live.call(channel.send("x" * 2001))
    assert refused.value.status == 400 and refused.value.code == 50035
    assert len(fake.get("/_fake/sent", params={"channel_id": channel_id}).json()) == len(sent)


def test_typing_a_nonce_and_a_rate_limit(fake, world):
    live, channel_id = world["live"], world["channel_id"]
    channel = live.client.get_channel(int(channel_id))

    async def type_briefly():
        async with channel.typing():
            pass

    live.call(type_briefly())
    assert fake.get("/_fake/typing", params={"channel_id": channel_id}).json()

    first, second = live.call(channel.send("once", nonce=424242)), live.call(channel.send("once", nonce=424242))
    assert first.id == second.id
    assert [m["content"] for m in fake.get("/_fake/sent", params={"channel_id": channel_id}).json()].count("once") == 1

    post(fake, "/_fake/ratelimit", {"channel_id": channel_id, "count": 1, "retry_after": 0.05})
    live.call(channel.send("after a 429"))
    statuses = [
        r["status"]
        for r in fake.get("/_fake/requests", params={"bot_id": world["bot"]["id"]}).json()
        if r["method"] == "POST" and r["path"] == f"/api/v10/channels/{channel_id}/messages"
    ]
    assert statuses[-2:] == [429, 200]


@pytest.mark.parametrize("abrupt", [False, True], ids=["close-frame", "abrupt"])
def test_after_a_drop_the_bot_resumes_and_gets_what_it_missed_once(fake, world, abrupt):
    live, bot_id = world["live"], world["bot"]["id"]
    before = fake.get("/_fake/connections").json()[bot_id]
    seen_before = len(live.messages)
    dropped = post(fake, "/_fake/drop", {"bot_id": bot_id, "abrupt": abrupt, "reconnect_delay": 0.3})
    assert dropped["dropped"] == 1
    content = f"while you were away ({'abrupt' if abrupt else 'close'})"
    post(
        fake,
        "/_fake/messages",
        {"channel_id": world["channel_id"], "author": {"id": "100000000000000001", "username": "alice"}, "content": content},
    )

    wait_until(
        lambda: fake.get("/_fake/connections").json()[bot_id]["resumes"] > before["resumes"], timeout=10, message="a RESUME"
    )
    live.wait_for_message(content)
    time.sleep(0.2)
    assert len(live.received(content)) == 1
    assert len(live.messages) == seen_before + 1
    assert fake.get("/_fake/connections").json()[bot_id]["identifies"] == before["identifies"]


def test_a_bad_token_is_a_login_failure(fake):
    async def login():
        client = discord.Client(intents=discord.Intents.default())
        try:
            await client.login("not-a-registered-token")
        finally:
            await client.close()

    with pytest.raises(discord.LoginFailure):
        asyncio.run(login())


def test_a_button_click_reaches_on_interaction_and_gets_an_ephemeral_answer(fake, world):
    live, channel_id = world["live"], world["channel_id"]
    channel = live.client.get_channel(int(channel_id))

    async def post_button():
        view = discord.ui.View(timeout=None)
        view.add_item(discord.ui.Button(label="Approve", custom_id="approve"))
        return await channel.send("Approve?", view=view)

    message = live.call(post_button())
    clicked = post(
        fake,
        "/_fake/click",
        {"message_id": str(message.id), "custom_id": "approve", "user": {"id": "100000000000000001", "username": "alice"}},
    )
    wait_until(lambda: live.answered or live.errors, timeout=5, message="the interaction to be answered")
    assert not live.errors, live.errors
    assert live.answered[0].user.name == "alice" and live.answered[0].message.id == message.id

    [record] = [i for i in fake.get("/_fake/interactions").json() if i["id"] == clicked["id"]]
    [callback] = record["callbacks"]
    assert callback["type"] == 4 and callback["data"]["flags"] & 64 and callback["data"]["content"] == "pressed approve"
