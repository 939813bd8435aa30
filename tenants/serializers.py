from rest_framework import serializers

from sessions.providers import provider_names
from sessions.providers.chain import base_url_clean, fallbacks_clean
from sessions.runs.compaction import compaction_config_clean
from tenants.models import Agent, ApiKey, slug_validator
from tenants.scopes import Scope
from tenants.services import approval_clean, sandbox_clean, tool_policy_clean
from tools.skills import skills_config_clean, skills_dirs_clean


class AgentSerializer(serializers.ModelSerializer):
    slug = serializers.CharField(max_length=63, validators=[slug_validator])
    fallbacks = serializers.JSONField(
        required=False,
        help_text='Tried in order when the model fails before answering: model ids of the agent\'s provider, or '
                  '{"provider": ..., "model": ...}.',
    )
    api_key = serializers.CharField(
        required=False, allow_blank=True, write_only=True, max_length=500,
        help_text="The provider key for this agent (write-only); empty means the deployment's.",
    )
    api_key_hint = serializers.SerializerMethodField(help_text="The last 4 characters of the agent's own key, if set.")
    skills = serializers.JSONField(required=False, help_text='{"enabled": [names]?, "disabled": [names]?}')
    compaction = serializers.JSONField(required=False, help_text='{"threshold_tokens": N, "keep_recent_tokens": M}')
    tool_policy = serializers.JSONField(required=False, help_text='{"allow": [...], "deny": [...]}')
    approval = serializers.JSONField(required=False, help_text='{"mode": "off"|"on_miss"|"always", "allowlist": [...]}')
    skills_dirs = serializers.JSONField(required=False)
    sandbox = serializers.JSONField(required=False, help_text='{"network": false}')

    class Meta:
        model = Agent
        fields = (
            "slug", "name", "provider", "model", "fallbacks", "base_url", "api_key", "api_key_hint", "system_prompt",
            "max_tokens", "tool_policy", "approval", "skills_dirs", "skills", "compaction", "sandbox",
            "created_at", "updated_at",
        )
        read_only_fields = ("created_at", "updated_at")
        extra_kwargs = {"model": {"required": False}, "max_tokens": {"min_value": 1, "max_value": 200000}}

    def validate_slug(self, value):
        tenant = self.context["request"].user.tenant
        existing = Agent.objects.filter(tenant=tenant, slug=value)
        if self.instance is not None:
            existing = existing.exclude(pk=self.instance.pk)
        if existing.exists():
            raise serializers.ValidationError(f"An agent with slug '{value}' already exists.")
        return value

    def validate_provider(self, value):
        if value not in provider_names():
            raise serializers.ValidationError(f"Unknown provider '{value}'. Supported: {', '.join(provider_names())}.")
        return value

    def get_api_key_hint(self, agent) -> str:
        return f"…{agent.api_key[-4:]}" if agent.api_key else ""

    def validate_fallbacks(self, value):
        return fallbacks_clean(value)

    def validate_base_url(self, value):
        return base_url_clean(value)

    def validate_skills(self, value):
        return skills_config_clean(value)

    def validate_compaction(self, value):
        return compaction_config_clean(value)

    def validate_skills_dirs(self, value):
        # Server folders only inside the operator's BEAMCLAW_SKILLS_ROOTS (docs/skills.md).
        return skills_dirs_clean(value)

    def validate_tool_policy(self, value):
        return tool_policy_clean(value)

    def validate_approval(self, value):
        return approval_clean(value)

    def validate_sandbox(self, value):
        return sandbox_clean(value)


class ApiKeySerializer(serializers.ModelSerializer):
    key_prefix = serializers.SerializerMethodField()
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.values), read_only=True)

    class Meta:
        model = ApiKey
        fields = ("id", "name", "key_prefix", "scopes", "rate_limit_per_minute", "created_at", "last_used_at", "revoked_at")
        read_only_fields = fields

    def get_key_prefix(self, obj) -> str:
        return f"bc_{obj.prefix}_"


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.values), min_length=1, required=False,
        help_text="Some of read, chat, admin; at most the scopes of the key making the request (the default).",
    )
    rate_limit_per_minute = serializers.IntegerField(
        min_value=0, max_value=2**31 - 1, required=False,  # the column is a Postgres integer
        help_text="At most the limit of the key making the request (the default); 0 (unlimited) only if that key is unlimited.",
    )


class IssuedApiKeySerializer(ApiKeySerializer):
    api_key = serializers.CharField(read_only=True, help_text="The secret key. Shown only in this response.")

    class Meta(ApiKeySerializer.Meta):
        fields = (*ApiKeySerializer.Meta.fields, "api_key")
