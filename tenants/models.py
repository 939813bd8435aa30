import hashlib
import secrets

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import RegexValidator
from django.db import models

from tenants.scopes import ALL_SCOPES, Scope

slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$",
    "Use 1-63 lowercase letters, digits and hyphens, starting with a letter or digit.",
)


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    max_concurrent_runs = models.PositiveIntegerField(default=10)
    daily_token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Input+output tokens per UTC day; empty means unlimited."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


def default_scopes() -> list[str]:
    return list(ALL_SCOPES)


class ApiKey(models.Model):
    """An API key `bc_<prefix>_<secret>`; only the SHA-256 of the whole key is stored.

    A key made through the API never has a scope or a higher request rate than the key that made it
    (`tenants.services.api_key_create`); only the operator (Django admin) raises either.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute; empty means the deployment default, 0 unlimited."
    )
    scopes = ArrayField(
        models.CharField(max_length=16, choices=Scope.choices), default=default_scopes,
        help_text="What the key may do: read, chat, admin (see docs/gateway.md).",
    )
    created_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The key that made this one through the API; empty when the operator issued it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            # A key with no scope, or one nobody checks for, is a mistake that would only surface as 403s.
            models.CheckConstraint(
                condition=models.Q(scopes__contained_by=list(ALL_SCOPES)) & ~models.Q(scopes=[]),
                name="apikey_known_nonempty_scopes",
            ),
        ]

    def __str__(self) -> str:
        return f"bc_{self.prefix}_…"

    @staticmethod
    def hash_key(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @staticmethod
    def generate() -> tuple[str, str]:
        """Return (prefix, raw_key)."""
        prefix = secrets.token_hex(4)
        return prefix, f"bc_{prefix}_{secrets.token_urlsafe(32)}"

    @property
    def effective_rate_limit(self) -> int:
        """Requests per minute this key gets; 0 means unlimited."""
        if self.rate_limit_per_minute is None:
            return settings.BEAMCLAW["RATE_LIMIT_PER_MINUTE"]
        return self.rate_limit_per_minute

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def default_tool_policy() -> dict:
    return {"allow": [], "deny": []}


def default_approval() -> dict:
    return {"mode": "off", "allowlist": []}


def default_sandbox() -> dict:
    return {"network": False}


class Agent(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="agents")
    slug = models.CharField(max_length=63, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True)
    # A name in the provider registry (sessions/providers/): built-ins and plug-ins, so no fixed choices
    # here; the API, the admin and agent_create check it against the registry.
    provider = models.CharField(max_length=32, default="anthropic")
    model = models.CharField(max_length=128)
    fallbacks = models.JSONField(
        default=list, blank=True,
        help_text='Tried in order when the model is unavailable: model ids of the same provider, or '
                  '{"provider": ..., "model": ...} for another provider.',
    )
    # Where the provider is reached and with which key, for providers that take them (the OpenAI-compatible
    # one); empty means the deployment's (OPENAI_BASE_URL / OPENAI_API_KEY). The key is write-only.
    base_url = models.CharField(max_length=500, blank=True, default="")
    api_key = models.CharField(max_length=500, blank=True, default="")
    system_prompt = models.TextField(blank=True, default="You are a helpful assistant.")
    max_tokens = models.PositiveIntegerField(default=4096)
    tool_policy = models.JSONField(default=default_tool_policy, blank=True)
    approval = models.JSONField(default=default_approval, blank=True)
    skills_dirs = models.JSONField(default=list, blank=True)
    # Which skills the agent uses: {"enabled": [names]} (only those; absent means every skill) and
    # {"disabled": [names]} (never those).
    skills = models.JSONField(default=dict, blank=True)
    # When older turns are summarized (sessions/runs/compaction.py): {"threshold_tokens": N, ...}.
    compaction = models.JSONField(default=dict, blank=True)
    sandbox = models.JSONField(default=default_sandbox, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant__slug", "slug"]
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="agent_unique_slug_per_tenant")]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.slug}"

    def save(self, *args, **kwargs):
        if not self.model:
            self.model = settings.BEAMCLAW["DEFAULT_MODEL"]
        super().save(*args, **kwargs)
