"""Signal receivers, connected in ChannelsAppConfig.ready()."""

from django.dispatch import receiver

from channels_app.services import channel_reply_release, channel_reply_send
from sessions.signals import run_finished


@receiver(run_finished, dispatch_uid="channels-run-finished")
def _run_finished(sender, run_id, status, trigger=None, **kwargs):
    # Not only channel-triggered runs owe a reply: in `collect` mode a channel message joins whatever run
    # of its session waits, so the reply row, not the trigger, decides.
    reply_id = channel_reply_release(run_id=run_id)
    if reply_id is not None:
        channel_reply_send(reply_id)
