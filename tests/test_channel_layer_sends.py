"""Channel-layer sends from synchronous code (infra/channel_layer.py, _LaterSends): a Celery task's thread or a
view's hands a notification over and goes on; it reaches the sockets' channels in the order handed over, through
the real channel layer and Redis."""

import asyncio
import logging
import threading
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from beamclaw_project.infra.channel_layer import group_send_later, send_later
from sessions import notify


def _socket_channel(*session_ids) -> str:
    """A channel as a socket that followed the sessions would have (notify.subscribe)."""
    channel = async_to_sync(get_channel_layer().new_channel)()
    for session_id in session_ids:
        async_to_sync(notify.subscribe)(session_id, channel)
    return channel


def _received(channel: str, count: int) -> list[dict]:
    async def receive():
        return [await asyncio.wait_for(get_channel_layer().receive(channel), 30) for _ in range(count)]

    return async_to_sync(receive)()


def _in_a_task_thread(work) -> None:
    """Run `work` in a thread without an event loop, as Celery's task threads are."""
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()


def test_run_starts_told_from_a_task_thread_reach_the_session_s_sockets_in_order():
    session_id = uuid.uuid4()
    channel = _socket_channel(session_id)
    run_ids = [uuid.uuid4() for _ in range(20)]

    _in_a_task_thread(lambda: [notify.session_subscribers_notify(session_id, run_id) for run_id in run_ids])

    messages = _received(channel, len(run_ids))
    assert [m["run_id"] for m in messages] == [str(run_id) for run_id in run_ids]
    assert {(m["type"], m["session_id"]) for m in messages} == {("run.started", str(session_id))}


def test_a_run_start_is_sent_only_to_a_session_that_a_socket_follows():
    watched, unwatched = uuid.uuid4(), uuid.uuid4()
    channel = _socket_channel(watched)
    # The socket's channel joins the unwatched session's group without registering as its subscriber: only the
    # subscribers' set decides whether a start is sent.
    async_to_sync(get_channel_layer().group_add)(notify.session_group(unwatched), channel)
    first, second = uuid.uuid4(), uuid.uuid4()

    def starts():
        notify.session_subscribers_notify_if_any(unwatched, first)
        notify.session_subscribers_notify_if_any(watched, second)

    _in_a_task_thread(starts)

    # Sent in order: had the first been sent, it would arrive first.
    [message] = _received(channel, 1)
    assert (message["run_id"], message["session_id"]) == (str(second), str(watched))


def test_a_send_that_fails_is_logged_and_the_sends_after_it_go_out(caplog):
    group = f"test.{uuid.uuid4().hex}"
    channel = async_to_sync(get_channel_layer().new_channel)()
    async_to_sync(get_channel_layer().group_add)(group, channel)

    async def broken():
        raise ConnectionError("Redis went away")

    with caplog.at_level(logging.ERROR, logger="beamclaw_project.infra.channel_layer"):
        send_later(broken, what="the broken one")
        group_send_later(group, {"type": "after.it"}, what="the next one")
        [message] = _received(channel, 1)

    assert message["type"] == "after.it"
    assert "could not notify WebSocket clients: the broken one" in caplog.text
