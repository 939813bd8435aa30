from rest_framework import serializers

from sessions.models import AgentSession, Message, Run
from sessions.services import SESSION_KEY_MAX

QUEUE_MODES = AgentSession.QueueMode.choices


class RunSerializer(serializers.ModelSerializer):
    session = serializers.UUIDField(source="session_id", read_only=True)
    queue_mode = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = (
            "id", "session", "status", "trigger", "queue_mode", "step", "error", "error_code",
            "input_tokens", "output_tokens", "usage", "created_at", "started_at", "finished_at",
        )
        read_only_fields = fields

    def get_queue_mode(self, obj) -> str | None:
        return obj.params.get("queue_mode")

    def get_usage(self, obj) -> dict:
        return obj.usage


class SessionSerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = AgentSession
        fields = (
            "id", "key", "agent", "status", "ephemeral", "queue_mode", "parent",
            "input_tokens", "output_tokens", "created_at", "updated_at",
        )
        read_only_fields = ("id", "key", "agent", "status", "ephemeral", "parent", "input_tokens", "output_tokens", "created_at", "updated_at")


class SessionCreateSerializer(serializers.Serializer):
    agent = serializers.CharField(help_text="Slug of one of your agents.")
    # The whole key agent:<agent>:<name> may be SESSION_KEY_MAX long; session_create checks it with the
    # agent's slug (a bare name may be shorter by that much) and says how long the name may be.
    key = serializers.CharField(
        required=False, max_length=SESSION_KEY_MAX,
        help_text=f"agent:<agent>:<name>, or just <name>; at most {SESSION_KEY_MAX} characters for the whole key.",
    )
    queue_mode = serializers.ChoiceField(choices=QUEUE_MODES, required=False)


class SessionResetSerializer(serializers.Serializer):
    session = SessionSerializer()
    archived_session = serializers.UUIDField(help_text="Closed session now holding the previous transcript.")


class MessageSerializer(serializers.ModelSerializer):
    text = serializers.CharField(read_only=True)

    class Meta:
        model = Message
        fields = ("seq", "role", "content", "text", "run", "excluded_reason", "created_at")
        read_only_fields = fields


class ContentField(serializers.JSONField):
    """A user message: a string, or a list of Anthropic content blocks (text, image)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if isinstance(value, str):
            if not value.strip():
                raise serializers.ValidationError("Must not be empty.")
            return [{"type": "text", "text": value}]
        if not isinstance(value, list) or not value:
            raise serializers.ValidationError("Must be a non-empty string or a non-empty list of content blocks.")
        for i, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") not in ("text", "image"):
                raise serializers.ValidationError(f"Block {i} must be an object with type 'text' or 'image'.")
            if block["type"] == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
                raise serializers.ValidationError(f"Block {i} needs a non-empty 'text' string.")
            if block["type"] == "image" and not isinstance(block.get("source"), dict):
                raise serializers.ValidationError(f"Block {i} needs a 'source' object.")
        return value


class MessageCreateSerializer(serializers.Serializer):
    content = ContentField(help_text="A string or a list of Anthropic content blocks.")
    mode = serializers.ChoiceField(choices=QUEUE_MODES, required=False, help_text="Overrides the session's queue mode.")


class RunAcceptedSerializer(serializers.Serializer):
    run = RunSerializer()
