from django.db import models

from sessions.models import Run
from tenants.models import Tenant


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
