from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tools.models import Approval, Skill, ToolInvocation
from tools.skills import skill_files


class ToolInvokeInputSerializer(serializers.Serializer):
    agent = serializers.CharField(max_length=63, help_text="Agent slug; the call runs with this agent's tools, policy and approvals.")
    tool = serializers.CharField(max_length=64)
    input = serializers.JSONField(default=dict, help_text="The tool's input object, as the model would send it.")
    session = serializers.UUIDField(
        required=False, allow_null=True,
        help_text="Run in this session's workspace (and see its background processes); without it the agent's API workspace is used.",
    )

    def validate_input(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        if _has_nul(value):
            # Postgres cannot store NUL characters; say so instead of failing on the insert.
            raise serializers.ValidationError("Must not contain NUL characters.")
        return value


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


class ToolResultSerializer(serializers.Serializer):
    """The tool's result. Tools add their own fields (exec: exit_code, status, handle, timed_out,
    truncated; web_fetch: final_url, status, content_type, title; process: processes, ...)."""

    ok = serializers.BooleanField()
    output = serializers.JSONField(help_text="Text for exec, process and web_fetch.")
    error = serializers.CharField(required=False)
    invocation = serializers.UUIDField()
    tool = serializers.CharField()


class ApprovalSerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    run = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()

    class Meta:
        model = Approval
        fields = [
            "id", "status", "tool", "input", "subject", "agent", "session", "run", "tool_call", "invocation",
            "always", "decided_by", "reason", "created_at", "expires_at", "decided_at", "result",
        ]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "format": "uuid", "nullable": True})
    def get_run(self, approval) -> str | None:
        return str(approval.tool_call.run_id) if approval.tool_call_id else None

    @extend_schema_field({"type": "object", "additionalProperties": {}, "nullable": True,
                          "description": "The call's result once it ran (or was denied); null while it waits or runs."})
    def get_result(self, approval) -> dict | None:
        """The call's result once it ran (or was denied); null while it waits or runs."""
        call = approval.tool_call if approval.tool_call_id else approval.invocation
        return call.output


class ApprovalDecisionSerializer(serializers.Serializer):
    always = serializers.BooleanField(default=False, help_text="Also add this call's exact pattern to the agent's allowlist.")
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class ApprovalDenySerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class ToolInvocationSerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    approval = serializers.SerializerMethodField()

    class Meta:
        model = ToolInvocation
        fields = ["id", "agent", "session", "tool", "input", "status", "output", "approval", "requested_by",
                  "created_at", "started_at", "finished_at"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.UUID)
    def get_approval(self, invocation) -> str | None:
        approval = getattr(invocation, "approval", None)
        return str(approval.pk) if approval is not None else None


class SkillSerializer(serializers.ModelSerializer):
    class Meta:
        model = Skill
        fields = ["id", "name", "description", "digest", "file_count", "size", "created_at", "updated_at"]
        read_only_fields = fields


class SkillFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size = serializers.IntegerField()


class SkillDetailSerializer(SkillSerializer):
    files = serializers.SerializerMethodField()

    class Meta(SkillSerializer.Meta):
        fields = [*SkillSerializer.Meta.fields, "skill_md", "files"]
        read_only_fields = fields

    @extend_schema_field(SkillFileSerializer(many=True))
    def get_files(self, skill) -> list[dict]:
        return skill_files(skill)


class SkillUploadSerializer(serializers.Serializer):
    """Exactly one of: `file` (multipart: a .zip of the skill's folder, or its SKILL.md), `skill_md` (the
    text of a SKILL.md), `zip_base64` (a .zip, base64-encoded, for clients that only send JSON)."""

    file = serializers.FileField(required=False, help_text="A .zip of the skill folder, or a SKILL.md.")
    skill_md = serializers.CharField(required=False, trim_whitespace=False, max_length=256 * 1024)
    zip_base64 = serializers.CharField(required=False, trim_whitespace=True, max_length=4 * 1024 * 1024)


class AgentSkillSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(source="entry.description")
    source = serializers.CharField(
        source="entry.source",
        help_text='"uploaded", or skills_dirs[<index>] and the folder relative to it (never a server path).',
    )
    eligible = serializers.BooleanField(help_text="In the agent's prompt and readable with the skill tool.")
    reason = serializers.CharField(help_text="Why not, when not eligible (e.g. `missing binary: ffmpeg`).")
    always = serializers.BooleanField(help_text="Included whole in the system prompt.")
