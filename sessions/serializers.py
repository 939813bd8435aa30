from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from sessions.content import ContentInvalid, content_parse
from sessions.models import AgentSession, Compaction, Message, Run
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


class SessionListSerializer(serializers.ListSerializer):
    """Sessions with their children's ids from one query for the whole page, not one per session."""

    def to_representation(self, data):
        sessions = list(data.all() if hasattr(data, "all") else data)
        children: dict = {}
        rows = AgentSession.objects.filter(parent_id__in=[s.pk for s in sessions]).order_by("created_at")
        for parent_id, child_id in rows.values_list("parent_id", "pk"):
            children.setdefault(parent_id, []).append(child_id)
        for session in sessions:
            session.children_ids = children.get(session.pk, [])
        return super().to_representation(sessions)


class SessionSerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    children = serializers.SerializerMethodField(help_text="Ids of the sub-agent sessions this session spawned, oldest first.")
    spawned_by = serializers.UUIDField(
        source="spawned_by_id", read_only=True, allow_null=True,
        help_text="For a sub-agent: the parent's run that spawned it.",
    )

    class Meta:
        model = AgentSession
        list_serializer_class = SessionListSerializer
        fields = (
            "id", "key", "agent", "status", "ephemeral", "queue_mode", "parent", "children", "label", "spawned_by",
            "input_tokens", "output_tokens", "created_at", "updated_at",
        )
        read_only_fields = (
            "id", "key", "agent", "status", "ephemeral", "parent", "label", "input_tokens", "output_tokens",
            "created_at", "updated_at",
        )

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_children(self, obj) -> list[str]:
        ids = getattr(obj, "children_ids", None)
        if ids is None:
            ids = obj.children.order_by("created_at").values_list("pk", flat=True)
        return [str(pk) for pk in ids]


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
    content = ContentField(help_text=(
        "A string, or a list of content parts: text, image (Anthropic) or image_url (OpenAI). Images are PNG, JPEG, "
        "GIF or WebP, inline (base64) or by http(s) URL, which the gateway fetches before accepting the message "
        "(docs/images.md)."
    ))
    mode = serializers.ChoiceField(choices=QUEUE_MODES, required=False, help_text="Overrides the session's queue mode.")


class RunAcceptedSerializer(serializers.Serializer):
    run = RunSerializer()


class CompactionSerializer(serializers.ModelSerializer):
    """The same fields as the worker reports for a compaction (sessions.runs.compaction.compaction_as_dict)."""

    session = serializers.UUIDField(source="session_id", read_only=True)

    class Meta:
        model = Compaction
        fields = (
            "id", "session", "first_kept_seq", "trigger", "tokens_before", "tokens_after", "usage", "model",
            "summary", "created_at",
        )
        read_only_fields = fields
