"""Which Discord messages reach an agent, decided from the message alone and the account's settings.

Pure: no Discord client and no database, so every rule is a plain function of its inputs (the DM
policy's database half, pairings, is `accounts.dm_allowed`).

- Messages from bots, this one included, are ignored (two bots answering each other never stop).
- DMs go to the DM policy (`dm_policy`).
- Guild messages count only in configured guilds, and only in the listed channels when the guild lists
  some (a thread counts as its parent channel). With `require_mention` (the default), only a message that
  mentions the bot or replies to one of its messages counts; the mention is taken out of the prompt.
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Inbound:
    """What the gate needs to know about a message."""

    author_id: str
    author_is_bot: bool
    content: str
    guild_id: str | None  # None: a DM
    channel_id: str
    parent_channel_id: str | None  # a thread's channel
    mentions_bot: bool
    replies_to_bot: bool


@dataclass(frozen=True)
class Verdict:
    action: str  # "ignore" | "dm" (subject to the DM policy) | "accept"
    prompt: str = ""
    reason: str = ""


def gate(message: Inbound, *, config: dict, bot_id: str) -> Verdict:
    if message.author_is_bot or message.author_id == bot_id:
        return Verdict("ignore", reason="from a bot")
    prompt = strip_mention(message.content, bot_id)
    if message.guild_id is None:
        if config.get("dm_policy", "pairing") == "disabled":
            return Verdict("ignore", reason="DMs are disabled")
        return Verdict("dm", prompt=prompt) if prompt else Verdict("ignore", reason="empty")
    guild = config.get("guilds", {}).get(message.guild_id)
    if guild is None:
        return Verdict("ignore", reason="guild not configured")
    channels = guild.get("channels")
    if channels is not None and message.channel_id not in channels and message.parent_channel_id not in channels:
        return Verdict("ignore", reason="channel not listed")
    if guild.get("require_mention", True) and not (message.mentions_bot or message.replies_to_bot):
        return Verdict("ignore", reason="not mentioned")
    return Verdict("accept", prompt=prompt) if prompt else Verdict("ignore", reason="empty")


def strip_mention(content: str, bot_id: str) -> str:
    return re.sub(rf"<@!?{re.escape(bot_id)}>", " ", content).strip()
