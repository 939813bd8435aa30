"""Input and output shapes of the channels API (/api/channels/).

The serializers check types only; what a setting may be (DM policies, Discord ids, callback URLs, names,
tokens) is channels_app/accounts.py's to decide, so REST, the admin and config files refuse the same things
with the same words. The account's token or signing secret is write-only: no output serializer has it, and
the output shows `token_hint` (its last four characters) instead.
"""

from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from channels_app.accounts import DM_POLICIES
from channels_app.models import Binding, ChannelAccount, Pairing
from sessions.models import AgentSession

DISCORD_KEYS = ("dm_policy", "allow_from", "guilds", "approvers", "stream")
WEBHOOK_KEYS = ("callback_url",)
CONFIG_KEYS = (*DISCORD_KEYS, *WEBHOOK_KEYS, "queue_mode")

_DISCORD_IDS_SCHEMA = {"type": "array", "items": {"type": "string", "pattern": "^[0-9]{1,20}$"}}
_GUILDS_SCHEMA = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {"require_mention": {"type": "boolean"}, "channels": _DISCORD_IDS_SCHEMA},
    },
}


@extend_schema_field(_DISCORD_IDS_SCHEMA)
class DiscordIdsField(serializers.JSONField):
    """A list of Discord ids; checked by the accounts service, so its message names the id at fault."""


@extend_schema_field(_GUILDS_SCHEMA)
class GuildsField(serializers.JSONField):
    pass


class ChannelAccountInputSerializer(serializers.Serializer):
    """Creating (kind, name, agent, and the kind's settings) or changing (any of them but kind) an account.

    A settings key given as null goes back to its default; a PATCH merges the keys it gives into the current
    settings."""

    kind = serializers.ChoiceField(choices=ChannelAccount.Kind.choices)
    name = serializers.CharField(max_length=100)
    agent = serializers.CharField(max_length=63, help_text="Slug of the agent that answers where no binding says otherwise.")
    token = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=512, style={"input_type": "password"},
        help_text="discord: the bot token (required). webhook: the signing secret (generated when left out). "
                  "Write-only; a PATCH with it replaces the secret.",
    )
    secret = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=512, style={"input_type": "password"},
        help_text="Another name for `token` (a webhook's signing secret).",
    )
    enabled = serializers.BooleanField(required=False)
    dm_policy = serializers.ChoiceField(
        choices=DM_POLICIES, required=False, allow_null=True,
        help_text="discord: who may DM the bot. pairing (default): unknown senders get a code an operator approves; "
                  "allowlist: only allow_from; open: anyone; disabled: no DMs.",
        error_messages={"invalid_choice": f"Must be one of {', '.join(DM_POLICIES)}."},
    )
    allow_from = DiscordIdsField(required=False, allow_null=True, help_text="discord: user ids whose DMs always reach the agent.")
    guilds = GuildsField(
        required=False, allow_null=True,
        help_text='discord: the guilds (servers) it answers in: {"<guild id>": {"require_mention": true, '
                  '"channels": ["<channel id>"]}}; without channels, every channel of the guild.',
    )
    approvers = DiscordIdsField(required=False, allow_null=True, help_text="discord: user ids asked to approve tool calls (default: allow_from).")
    stream = serializers.BooleanField(
        required=False, allow_null=True,
        help_text="discord: preview the reply as it is written, in one message edited at most once a second "
                  "(deleted when the reply is posted). Default false.",
    )
    callback_url = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=2000,
        help_text="webhook: where replies are POSTed (signed with the secret); empty: no replies.",
    )
    queue_mode = serializers.ChoiceField(
        choices=AgentSession.QueueMode.choices, required=False, allow_null=True,
        help_text="How messages queue behind a reply in a conversation (default: collect for discord, followup for webhook).",
    )

    def to_internal_value(self, data):
        if isinstance(data, dict):
            # What GET returned may come back in a PATCH; anything else is most likely a typo that would
            # otherwise be silently ignored.
            unknown = set(data) - set(self.fields) - set(OUTPUT_FIELDS)
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in sorted(unknown)})
        return super().to_internal_value(data)

    def validate(self, attrs):
        if "token" in attrs and "secret" in attrs and attrs["token"] != attrs["secret"]:
            raise serializers.ValidationError({"secret": "Give 'token' or 'secret' (the same thing), not both."})
        if "secret" in attrs:
            attrs["token"] = attrs.pop("secret")
        return attrs

    def service_arguments(self) -> dict:
        """The validated input as channel_account_create/update take it: the settings keys go in `config`."""
        data = dict(self.validated_data)
        config = {key: data.pop(key) for key in CONFIG_KEYS if key in data}
        if config or not self.partial:
            data["config"] = config
        if "token" in data:
            data["secret"] = data.pop("token")
        return data


class ChannelAccountSerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    token_hint = serializers.CharField(source="secret_hint", read_only=True, help_text="The secret's last four characters.")
    queue_mode = serializers.ChoiceField(choices=AgentSession.QueueMode.choices, source="config.queue_mode", read_only=True)

    class Meta:
        model = ChannelAccount
        fields = ["id", "kind", "name", "agent", "enabled", "status", "last_error", "token_hint", "queue_mode",
                  "created_at", "updated_at"]
        read_only_fields = fields


class DiscordAccountSerializer(ChannelAccountSerializer):
    dm_policy = serializers.ChoiceField(choices=DM_POLICIES, source="config.dm_policy", read_only=True)
    allow_from = serializers.ListField(child=serializers.CharField(), source="config.allow_from", read_only=True)
    guilds = GuildsField(source="config.guilds", read_only=True)
    approvers = serializers.ListField(child=serializers.CharField(), source="config.approvers", read_only=True)
    stream = serializers.BooleanField(source="config.stream", read_only=True, default=False)

    class Meta(ChannelAccountSerializer.Meta):
        fields = [*ChannelAccountSerializer.Meta.fields[:-2], *DISCORD_KEYS, "created_at", "updated_at"]
        read_only_fields = fields


class WebhookAccountSerializer(ChannelAccountSerializer):
    callback_url = serializers.CharField(source="config.callback_url", read_only=True, allow_null=True, default=None)
    hook_url = serializers.SerializerMethodField(help_text="Where the platform POSTs messages: /hooks/<id>, signed with the secret.")

    class Meta(ChannelAccountSerializer.Meta):
        fields = [*ChannelAccountSerializer.Meta.fields[:-2], "callback_url", "hook_url", "created_at", "updated_at"]
        read_only_fields = fields

    def get_hook_url(self, account) -> str:
        path = f"/hooks/{account.pk}"
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


OUTPUT_SERIALIZERS = {ChannelAccount.Kind.DISCORD: DiscordAccountSerializer, ChannelAccount.Kind.WEBHOOK: WebhookAccountSerializer}
OUTPUT_FIELDS = {field for serializer in OUTPUT_SERIALIZERS.values() for field in serializer.Meta.fields}


def channel_account_schema(*, many: bool = False) -> PolymorphicProxySerializer:
    """The output as OpenAPI sees it: one shape per kind, told apart by `kind`."""
    return PolymorphicProxySerializer(
        component_name="ChannelAccount", resource_type_field_name="kind", many=many,
        serializers={kind.value: serializer for kind, serializer in OUTPUT_SERIALIZERS.items()},
    )


def channel_account_data(account: ChannelAccount, *, request=None) -> dict:
    return OUTPUT_SERIALIZERS[account.kind](account, context={"request": request}).data


class MatchSerializer(serializers.Serializer):
    guild_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    channel_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    peer_id = serializers.CharField(
        required=False, allow_blank=True, max_length=64, help_text="A user (for DMs) or another conversation id."
    )

    def to_internal_value(self, data):
        if isinstance(data, dict) and set(data) - set(self.fields):
            raise serializers.ValidationError(
                f"Unknown key(s) {', '.join(sorted(map(str, set(data) - set(self.fields))))}; "
                "a match has guild_id, channel_id and peer_id."
            )
        return super().to_internal_value(data)


class BindingInputSerializer(serializers.Serializer):
    """A binding routes what its match covers to its agent; the most specific match wins, then `priority`."""

    match = MatchSerializer(help_text="At least one of guild_id, channel_id, peer_id; all given must match.")
    agent = serializers.CharField(max_length=63, help_text="Agent slug.")
    priority = serializers.IntegerField(default=0, min_value=-1_000_000, max_value=1_000_000)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields) - {"id", "created_at"}
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in sorted(unknown)})
        return super().to_internal_value(data)

    def service_arguments(self) -> dict:
        data = dict(self.validated_data)
        if "match" in data:
            match = data.pop("match")
            data.update({key: match.get(key, "") for key in MatchSerializer().fields})
        return data


class BindingSerializer(serializers.ModelSerializer):
    match = MatchSerializer(read_only=True)
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Binding
        fields = ["id", "match", "agent", "priority", "created_at"]
        read_only_fields = fields


class PairingSerializer(serializers.ModelSerializer):
    class Meta:
        model = Pairing
        fields = ["id", "code", "sender_id", "sender_name", "status", "expires_at", "created_at", "approved_at"]
        read_only_fields = fields


class PairingApproveSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=32, help_text="The 8 letters and digits the bot sent the sender.")
