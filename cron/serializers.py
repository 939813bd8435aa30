"""Input and output shapes of the cron API (also used by the `cron` tool, so both validate alike)."""

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from cron.delivery import DeliveryTargetError, deliver_parse, deliver_public
from cron.models import CronJob, CronRun
from cron.schedule import ScheduleError, schedule_parse
from tenants.models import Agent
from tenants.selectors import agent_by_slug


class ScheduleShapeSerializer(serializers.Serializer):
    """Documents the schedule object; parsing is ScheduleField's."""

    kind = serializers.ChoiceField(choices=CronJob.Kind.choices)
    at = serializers.CharField(required=False, help_text="at: ISO 8601 instant (or a delay such as '20m').")
    every = serializers.CharField(required=False, help_text="every: '30s', '15m', '2h', '1d', '1h30m'.")
    anchor = serializers.DateTimeField(required=False, help_text="every: runs at anchor + k × interval.")
    expr = serializers.CharField(required=False, help_text="cron: five fields, e.g. '0 9 * * 1-5', or '@daily'.")
    tz = serializers.CharField(required=False, help_text="cron (and a zone-less at): IANA zone, default UTC.")


class DeliverShapeSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["webhook", "channel"], default="webhook")
    url = serializers.URLField(required=False, help_text="webhook: where to POST.")
    headers = serializers.DictField(child=serializers.CharField(), required=False, help_text="webhook")
    secret = serializers.CharField(required=False, help_text="webhook: signs the body: X-BeamClaw-Signature: sha256=<hmac>.")
    channel = serializers.IntegerField(required=False, help_text="channel: the id of one of your channels.")
    to = serializers.CharField(required=False, help_text="channel: where on it (a Discord channel or user id, ...).")


@extend_schema_field(ScheduleShapeSerializer)
class ScheduleField(serializers.Field):
    def to_internal_value(self, data):
        try:
            return schedule_parse(
                data, now=timezone.now(), min_interval_seconds=settings.BEAMCLAW_CRON["MIN_INTERVAL_SECONDS"]
            )
        except ScheduleError as exc:
            raise serializers.ValidationError({exc.field: [exc.message]})

    def to_representation(self, value):
        return value.as_dict()


@extend_schema_field(DeliverShapeSerializer(allow_null=True))
class DeliverField(serializers.Field):
    def to_internal_value(self, data):
        try:
            return deliver_parse(data, tenant=self.context.get("tenant"))
        except DeliveryTargetError as exc:
            raise serializers.ValidationError(str(exc))

    def to_representation(self, value):
        return deliver_public(value)


class CronJobInputSerializer(serializers.Serializer):
    """Creating (all of it) or changing (any part of) a job. Needs context["tenant"]."""

    name = serializers.CharField(max_length=200)
    agent = serializers.CharField(max_length=63, help_text="Agent slug.")
    prompt = serializers.CharField(max_length=100_000)
    session_target = serializers.ChoiceField(choices=CronJob.SessionTarget.choices, default=CronJob.SessionTarget.MAIN)
    schedule = ScheduleField()
    deliver = DeliverField(required=False, allow_null=True)
    enabled = serializers.BooleanField(default=True)
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=7 * 86400, required=False, allow_null=True)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            # Read-only fields of the output may come back in a PUT of what GET returned; anything else
            # is most likely a typo that would otherwise be silently ignored.
            unknown = set(data) - set(self.fields) - set(CronJobSerializer.Meta.fields)
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in sorted(unknown)})
        return super().to_internal_value(data)

    def validate_agent(self, slug: str) -> Agent:
        agent = agent_by_slug(tenant=self.context["tenant"], slug=slug)
        if agent is None:
            raise serializers.ValidationError(f"You have no agent '{slug}'.")
        return agent


class CronJobSerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    schedule = ScheduleField(read_only=True)
    deliver = DeliverField(read_only=True)

    class Meta:
        model = CronJob
        fields = [
            "id", "name", "agent", "prompt", "session_target", "schedule", "deliver", "enabled", "timeout_seconds",
            "next_run_at", "last_run_at", "last_status", "consecutive_errors", "disabled_reason",
            "created_at", "updated_at",
        ]
        read_only_fields = fields


class CronRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = CronRun
        fields = [
            "id", "job", "scheduled_for", "trigger", "status", "started_at", "finished_at", "error", "run", "session",
            "delivery_status", "delivery_attempts", "delivery_error", "delivered_at",
        ]
        read_only_fields = fields
