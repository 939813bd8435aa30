from django.db import models

from sessions.models import Run
from tenants.models import Agent, Tenant


class ChannelReply(models.Model):
    """The reply a channel conversation is owed for a run one of its messages started, and how sending it went.

    Written with the run (channels_app/inbound.py); `waiting` until the run ends, then `pending` while the
    transport is tried, then delivered, failed (a permanent error, or the last attempt's transient one) or
    skipped (the run ended without a reply to send)."""

    class Status(models.TextChoices):
        WAITING = "waiting", "waiting for the run to end"
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"
        SKIPPED = "skipped"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # One reply per run: messages folded into one run (queue mode `collect`) are answered once.
    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="channel_reply")
    kind = models.CharField(max_length=24, help_text="The transport the reply goes through.")
    target = models.JSONField(help_text="Where, in the transport's terms (the conversation, the message answered).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="The last attempt's error, as the transport gave it.")
    remote_id = models.CharField(max_length=255, blank=True, help_text="The platform's id for the sent reply.")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "created_at"])]
        verbose_name_plural = "channel replies"

    def __str__(self) -> str:
        return f"{self.kind} reply to run {self.run_id} ({self.status})"


class ChannelAccount(models.Model):
    """A tenant's presence on a chat platform: a Discord bot, or a signed webhook endpoint.

    `secret` is the platform credential (a Discord bot token) or the webhook's signing secret: write-only
    at the API and never logged. `config` holds the kind's settings, validated by channels_app/accounts.py
    (docs/channels.md lists them). `revision` goes up whenever what the bot process runs with changes
    (secret, config, enabled), so `run_discord` restarts exactly the accounts that changed; `status` and
    `last_error` are the process's report and do not bump it."""

    class Kind(models.TextChoices):
        DISCORD = "discord"
        WEBHOOK = "webhook"

    class Status(models.TextChoices):
        NEW = "new", "not connected yet"
        CONNECTED = "connected"
        ERROR = "error"
        DISABLED = "disabled"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="channel_accounts")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    name = models.CharField(max_length=100)
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, related_name="channel_accounts",
        help_text="The agent that answers where no binding says otherwise.",
    )
    secret = models.TextField(help_text="Bot token or signing secret; write-only.")
    config = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    last_error = models.TextField(blank=True)
    revision = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="channel_account_unique_name_per_tenant")]
        indexes = [models.Index(fields=["kind", "enabled"])]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def secret_hint(self) -> str:
        return f"…{self.secret[-4:]}" if len(self.secret) >= 12 else "…"


class Binding(models.Model):
    """Routes a part of an account's conversations to another agent than the account's own.

    The most specific match wins: a peer (a user, for DMs) over a channel over a guild over the account's
    agent; `priority` orders bindings of the same specificity (higher first)."""

    account = models.ForeignKey(ChannelAccount, on_delete=models.CASCADE, related_name="bindings")
    guild_id = models.CharField(max_length=64, blank=True)
    channel_id = models.CharField(max_length=64, blank=True)
    peer_id = models.CharField(max_length=64, blank=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="channel_bindings")
    priority = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account", "-priority", "id"]

    def __str__(self) -> str:
        match = ", ".join(f"{k}={v}" for k, v in self.match.items()) or "everything"
        return f"{self.account} [{match}] → {self.agent.slug}"

    @property
    def match(self) -> dict:
        return {k: v for k in ("guild_id", "channel_id", "peer_id") if (v := getattr(self, k))}


class Pairing(models.Model):
    """A DM sender's request to talk to an account under `dm_policy: pairing`, and the operator's answer.

    One row per sender and account: an unknown sender gets a code (8 of A-Z0-9, valid an hour); once an
    operator approves it, that sender's DMs reach the agent. An expired code is replaced by a new one the
    next time the sender writes."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"

    account = models.ForeignKey(ChannelAccount, on_delete=models.CASCADE, related_name="pairings")
    sender_id = models.CharField(max_length=64)
    sender_name = models.CharField(max_length=200, blank=True)
    code = models.CharField(max_length=8)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["account", "sender_id"], name="pairing_unique_sender_per_account"),
            models.UniqueConstraint(fields=["code"], name="pairing_unique_code"),
        ]

    def __str__(self) -> str:
        return f"{self.account} pairing {self.sender_id} ({self.status})"
