"""Signal receivers, connected in ChannelsAppConfig.ready()."""

import logging

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from beamclaw_project.infra.redis import redis_client
from channels_app.accounts import ACCOUNTS_CHANGED
from channels_app.models import Binding, ChannelAccount
from channels_app.services import channel_reply_release, channel_reply_send
from sessions.signals import run_finished

logger = logging.getLogger(__name__)


@receiver(run_finished, dispatch_uid="channels-run-finished")
def _run_finished(sender, run_id, status, trigger=None, session_ephemeral=False, **kwargs):
    # Not only channel-triggered runs owe a reply: in `collect` mode a channel message joins whatever run
    # of its session waits, so the reply row, not the trigger, decides. A channel's session is never
    # ephemeral (one API request's or cron occurrence's), so those runs skip the lookup.
    if session_ephemeral:
        return
    reply_id = channel_reply_release(run_id=run_id)
    if reply_id is not None:
        channel_reply_send(reply_id)


@receiver(post_save, sender=ChannelAccount, dispatch_uid="channels-account-saved")
@receiver(post_delete, sender=ChannelAccount, dispatch_uid="channels-account-deleted")
@receiver(post_save, sender=Binding, dispatch_uid="channels-binding-saved")
@receiver(post_delete, sender=Binding, dispatch_uid="channels-binding-deleted")
def _accounts_changed(sender, **kwargs):
    # Wakes `run_discord` to reload now rather than at its next periodic look (channels_app/discord/bot.py).
    # The bot's own status reports are UPDATEs, which send no signal.
    def notify():
        try:
            redis_client().publish(ACCOUNTS_CHANGED, "1")
        except Exception:  # noqa: BLE001 - the periodic reload picks the change up anyway
            logger.warning("could not tell run_discord about a channel change; it sees it at its next reload")

    transaction.on_commit(notify)
