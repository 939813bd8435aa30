from rest_framework import serializers

from sessions.content import ContentInvalid, content_parse
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
    """A user message: a string, or a list of content parts (sessions/content.py says which)."""

    def to_internal_value(self, data):
        try:
            return content_parse(super().to_internal_value(data))
        except ContentInvalid as exc:
            raise serializers.ValidationError(exc.message)


class MessageCreateSerializer(serializers.Serializer):
    content = ContentField(help_text="A string, or a list of content parts: text, image (Anthropic) or image_url (OpenAI).")
    mode = serializers.ChoiceField(choices=QUEUE_MODES, required=False, help_text="Overrides the session's queue mode.")


class RunAcceptedSerializer(serializers.Serializer):
    run = RunSerializer()
