"""The test side of the fake Discord (tests/fakes/discord_server.py): its control endpoints as methods, and
a `run_discord` process to go with it."""

import sys
import uuid

import httpx

from tests.conftest import wait_until
from tests.procs import Process


class FakeDiscord:
    def __init__(self, url: str):
        self.http = httpx.Client(base_url=f"{url}/_fake", timeout=10)

    def bot(self, name: str = "") -> dict:
        """A registered bot: its user object, plus the `token` to give BeamClaw."""
        token = f"bot-{uuid.uuid4().hex}"
        user = self.http.post("/bots", json={"token": token, "username": name or f"bot-{token[-6:]}"}).raise_for_status().json()
        return {**user, "token": token}

    def guild(self, bots: list[dict], channels: int = 2) -> dict:
        return self.http.post("/guilds", json={
            "name": f"guild-{uuid.uuid4().hex[:6]}", "channels": [{"name": f"ch-{i}"} for i in range(channels)],
            "bots": [b["id"] for b in bots],
        }).raise_for_status().json()

    def say(self, author: dict, content: str, *, channel_id: str | None = None, dm_bot: dict | None = None,
            mentions: list[dict] = (), reply_to: str | None = None) -> dict:
        body = {"author": author, "content": content, "mentions": [m["id"] for m in mentions]}
        if dm_bot is not None:
            body["dm"] = {"bot_id": dm_bot["id"], "user_id": author["id"]}
        else:
            body["channel_id"] = channel_id
        if reply_to:
            body["reply_to"] = reply_to
        return self.http.post("/messages", json=body).raise_for_status().json()

    def sent(self, channel_id: str) -> list[dict]:
        return self.http.get("/sent", params={"channel_id": channel_id}).raise_for_status().json()

    def sent_by(self, bot: dict) -> list[dict]:
        return self.http.get("/sent", params={"bot_id": bot["id"]}).raise_for_status().json()

    def typing(self, channel_id: str) -> list:
        return self.http.get("/typing", params={"channel_id": channel_id}).raise_for_status().json()

    def connections(self) -> dict:
        return self.http.get("/connections").raise_for_status().json()

    def connection(self, bot: dict) -> dict:
        return self.connections().get(bot["id"], {})

    def drop(self, bot: dict, *, reconnect_delay: float = 0) -> None:
        """Close the bot's gateway connection; it cannot come back for `reconnect_delay` seconds."""
        self.http.post("/drop", json={"bot_id": bot["id"], "reconnect_delay": reconnect_delay}).raise_for_status()

    def ratelimit(self, channel_id: str, count: int, retry_after: float) -> None:
        self.http.post("/ratelimit", json={"channel_id": channel_id, "count": count, "retry_after": retry_after}).raise_for_status()

    def click(self, message_id: str, custom_id: str, user: dict) -> str:
        return self.http.post("/click", json={"message_id": message_id, "custom_id": custom_id, "user": user}).raise_for_status().json()

    def requests(self) -> list[dict]:
        return self.http.get("/requests").raise_for_status().json()

    def wait_sent(self, channel_id: str, count: int, timeout: float = 30) -> list[dict]:
        return wait_until(lambda: (lambda s: s if len(s) >= count else None)(self.sent(channel_id)),
                          timeout=timeout, message=f"{count} message(s) from the bot in channel {channel_id}")


def user(name: str = "") -> dict:
    return {"id": str(uuid.uuid4().int % 10**18 + 10**17), "username": name or f"user-{uuid.uuid4().hex[:5]}"}


def start_run_discord(env: dict, log_dir, name: str = "run-discord") -> Process:
    return Process(name, [sys.executable, "manage.py", "run_discord"], env, log_dir).start()
