import uuid

from django.db import models
from django.db.models import Q

from tenants.models import Agent, Tenant


class AgentSession(models.Model):
    """A conversation with one agent. Its transcript is the ordered list of its Messages."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        CLOSED = "closed"

    class QueueMode(models.TextChoices):
        FOLLOWUP = "followup"
        COLLECT = "collect"
        STEER = "steer"
        INTERRUPT = "interrupt"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # (No index of its own: the unique (tenant, key) constraint's index starts with it.)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="sessions", db_index=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sessions")
    key = models.CharField(max_length=255, help_text="e.g. agent:<agent>:<name>")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    # A sub-agent's session: the parent's run that spawned it (aborting that run aborts this session's
    # runs) and the label it was given.
    spawned_by = models.ForeignKey(
        "Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="spawned_sessions"
    )
    label = models.CharField(max_length=100, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    ephemeral = models.BooleanField(default=False, help_text="Made for one request; closed after it.")
    queue_mode = models.CharField(max_length=16, choices=QueueMode.choices, default=QueueMode.FOLLOWUP)
    # The next Message.seq to hand out; bumped under the session row lock.
    next_seq = models.PositiveIntegerField(default=1)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="session_unique_key_per_tenant")]
        indexes = [models.Index(fields=["tenant", "agent", "-updated_at"])]
        verbose_name = "session"

    def __str__(self) -> str:
        return self.key


class Run(models.Model):
    """One agent turn: from a user message to the final assistant reply, through any number of steps."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        AWAITING_APPROVAL = "awaiting_approval"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        ABORTED = "aborted"

    ACTIVE_STATUSES = (Status.RUNNING, Status.AWAITING_APPROVAL)
    TERMINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.ABORTED)

    class Trigger(models.TextChoices):
        API = "api"
        OPENAI = "openai"
        WEBSOCKET = "websocket"
        CRON = "cron"
        CHANNEL = "channel"
        SUBAGENT = "subagent"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # (Neither has an index of its own: the (tenant, created_at) and (session, status, created_at) indexes
    # start with them. Every index of a run is written again each time its status changes.)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="runs", db_index=False)
    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="runs", db_index=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.API)
    # The user turn this run answers; written to the transcript when the run starts, so a message that
    # waits behind another run never lands between that run's user and assistant messages.
    input = models.JSONField(help_text="Anthropic content blocks of the user message.")
    # Per-request overrides, e.g. max_tokens / temperature from the OpenAI endpoint.
    params = models.JSONField(default=dict, blank=True)
    step = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=32, blank=True, help_text="e.g. overloaded, auth, not_found")
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A sub-agent's run: when its result was announced to the parent session (set in the transaction
    # that submits the announcement, so it happens exactly once).
    announced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["session", "status", "created_at"]),
            models.Index(fields=["tenant", "status"]),  # (a tenant's runs of one status: the REST API's filter)
            # A tenant's queued and running runs: every run start counts them. Only unfinished runs are in
            # it, so its size is what runs now, not the tenant's history; a query finds it only when it
            # names its statuses as literals (lifecycle.tenant_room_statements).
            models.Index(fields=["tenant", "status"], condition=Q(status__in=["queued", "running", "awaiting_approval"]),
                         name="run_unfinished_by_tenant"),
            models.Index(fields=["tenant", "created_at"]),
            # The sub-agent sweep's query (sessions/subagents.py), every few seconds: only runs it may act on.
            models.Index(fields=["finished_at"], condition=Q(trigger="subagent", announced_at__isnull=True),
                         name="run_unannounced_subagent"),
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    @property
    def usage(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    # (No index of its own: the unique (session, seq) constraint's index starts with it.)
    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="messages", db_index=False)
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.JSONField(help_text="Anthropic content blocks.")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    step = models.PositiveIntegerField(null=True, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    # Why the model no longer sees this message (empty: it does). A run that failed before the model
    # answered leaves its user message here, so a client's retry does not pile copies into the context.
    excluded_reason = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name="message_unique_seq"),
            # A redelivered step must not write its reply twice.
            models.UniqueConstraint(
                fields=["run", "step"], condition=Q(role="assistant"), name="message_one_reply_per_step"
            ),
            # A run's user message is written once however often the run is started.
            models.UniqueConstraint(fields=["run"], condition=Q(role="user"), name="message_one_input_per_run"),
        ]

    def __str__(self) -> str:
        return f"{self.session.key}#{self.seq} {self.role}"

    @property
    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if isinstance(b, dict) and b.get("type") == "text")


class ToolCall(models.Model):
    """A tool_use block of an assistant message, executed as its own task (tools issue)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        AWAITING_APPROVAL = "awaiting_approval"
        RUNNING = "running"
        # A call of one of the client's own tools: handed to the client when the run ended, settled by the
        # result the client's next request brings (sessions/runs/client_calls.py).
        AWAITING_CLIENT = "awaiting_client"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        DENIED = "denied"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="tool_calls")
    step = models.PositiveIntegerField()
    tool_use_id = models.CharField(max_length=64)
    name = models.CharField(max_length=64)
    input = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    output = models.JSONField(null=True, blank=True)
    decided_by = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "step", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "tool_use_id"], name="toolcall_unique_use_id")]
        # A request answering client calls finds them by id (sessions/chat.py): only the waiting ones.
        indexes = [models.Index(fields=["tool_use_id"], condition=Q(status="awaiting_client"),
                                name="toolcall_awaiting_client")]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class IdempotencyKey(models.Model):
    """A POST sent with an Idempotency-Key header. A repeat of the same request within the key's lifetime
    gets what the first one started (its run or tool invocation) instead of starting another."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    endpoint = models.CharField(max_length=32, help_text="Which operation the key was used for.")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the request; another body is a conflict.")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    invocation_id = models.UUIDField(null=True, blank=True, help_text="tools.ToolInvocation, for tools/invoke.")
    response = models.JSONField(default=dict, blank=True, help_text="What a replay must repeat (e.g. ids).")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            # Two concurrent first attempts: the second waits on this index, then replays the first.
            models.UniqueConstraint(fields=["tenant", "endpoint", "key"], name="idempotency_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint}:{self.key}"


class Compaction(models.Model):
    """A summary of a session's older turns: the model sees `summary` in place of every message before
    `first_kept_seq` (the transcript keeps them all, for audit)."""

    class Trigger(models.TextChoices):
        AUTO = "auto"
        MANUAL = "manual"

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="compactions")
    first_kept_seq = models.PositiveIntegerField(help_text="The first message the model still sees whole.")
    summary = models.TextField()
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.AUTO)
    tokens_before = models.PositiveIntegerField(default=0, help_text="Estimated context tokens before.")
    tokens_after = models.PositiveIntegerField(default=0, help_text="Estimated context tokens after.")
    usage = models.JSONField(default=dict, blank=True, help_text="What the summarizing call cost.")
    model = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "-first_kept_seq"]
        indexes = [models.Index(fields=["session", "-first_kept_seq"])]

    def __str__(self) -> str:
        return f"{self.session.key} compacted before #{self.first_kept_seq}"
