from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from beamclaw_project.infra import housekeeping
        from channels_app import receivers  # noqa: F401 - connects the signal receivers
        from channels_app.services import SWEEP_SLACK
        from channels_app.tasks import replies_sweep
        from channels_app.tool import MESSAGE_TOOL_SPEC
        from channels_app.transport import register_transport
        from channels_app.transports.discord import DiscordTransport
        from channels_app.transports.webhook import WebhookTransport
        from tools.registry import register

        register_transport("webhook", WebhookTransport())
        register_transport("discord", DiscordTransport())
        register(MESSAGE_TOOL_SPEC)
        # Safe on every worker at once (a reply is released by one conditional UPDATE); once per fleet
        # per slack period is all the lag it needs.
        housekeeping.register("channel_replies_sweep", replies_sweep, every_seconds=int(SWEEP_SLACK.total_seconds()))
