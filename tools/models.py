"""Approvals and API tool invocations.

The agent loop's own calls are `sessions.ToolCall` rows (one per tool_use block). A call made through
POST /api/tools/invoke has no run, so it gets a ToolInvocation row instead. Either kind may wait for a
human: its Approval row records the request, the decision and who made it.
"""

import uuid

from django.db import models
from django.db.models import Q

from sessions.models import AgentSession, ToolCall
from tenants.models import Agent, Tenant


class ToolInvocation(models.Model):
    # The life cycle of a model's call: one runner (tools/runner.py) drives both.
    Status = ToolCall.Status

    SETTLED_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.DENIED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tool_invocations")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tool_invocations")
    session = models.ForeignKey(
        AgentSession, null=True, blank=True, on_delete=models.CASCADE, related_name="tool_invocations"
    )
    tool = models.CharField(max_length=64)
    input = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    output = models.JSONField(null=True, blank=True)
    requested_by = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.tool} ({self.status})"


class Approval(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        ALLOWED = "allowed"
        DENIED = "denied"
        # Nobody answered before expires_at; treated as a denial.
        EXPIRED = "expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="approvals")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="approvals")
    session = models.ForeignKey(AgentSession, null=True, blank=True, on_delete=models.CASCADE, related_name="approvals")
    tool_call = models.OneToOneField(ToolCall, null=True, blank=True, on_delete=models.CASCADE, related_name="approval")
    invocation = models.OneToOneField(
        ToolInvocation, null=True, blank=True, on_delete=models.CASCADE, related_name="approval"
    )
    tool = models.CharField(max_length=64)
    input = models.JSONField(default=dict)
    subject = models.TextField(blank=True, help_text="What the allowlist is matched against, e.g. the command.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    always = models.BooleanField(default=False, help_text="The decision added a pattern to the agent's allowlist.")
    decided_by = models.CharField(max_length=100, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(tool_call__isnull=False, invocation__isnull=True)
                | Q(tool_call__isnull=True, invocation__isnull=False),
                name="approval_for_exactly_one_call",
            )
        ]
        indexes = [models.Index(fields=["tenant", "status", "-created_at"]), models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.tool}: {self.subject[:60]} ({self.status})"


class Skill(models.Model):
    """A skill a tenant uploaded (POST /api/skills/): its SKILL.md as text, for listings and prompts
    without touching the files, and every file of the folder as one zip we wrote ourselves from checked
    entries (tools/skills.py), unpacked per worker under its content hash when the files are needed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="skills")
    name = models.CharField(max_length=64)
    description = models.TextField()
    skill_md = models.TextField()
    archive = models.BinaryField()
    digest = models.CharField(max_length=64, help_text="sha256 of the folder's paths and contents.")
    file_count = models.PositiveIntegerField()
    size = models.PositiveIntegerField(help_text="Bytes of all files, unpacked.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        # One skill per name in a tenant: uploading the name again replaces it.
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="skill_unique_name_per_tenant")]

    def __str__(self) -> str:
        return self.name
