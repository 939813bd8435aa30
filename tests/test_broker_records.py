"""A worker's record of the messages it fetched (beamclaw_project/infra/broker.py): kombu keeps each in the
`unacked` hash until it is acknowledged, so that a killed worker's messages go back to their queue. The
record is sent without waiting for Redis's answer; these tests hold that it is written all the same, and
that an acknowledgement removes it whole."""

import uuid

from celery import current_app

from beamclaw_project.infra.redis import redis_client


def _fetched(channel, tag: str):
    raw = {"body": "e30=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {},
           "properties": {"delivery_tag": tag, "delivery_info": {"exchange": "", "routing_key": "records.test"},
                          "body_encoding": "base64", "priority": 0}}
    return channel.Message(raw, channel=channel)


def _cut_unrun(qos, send) -> None:
    """Redis holds what `send` sends on the records' connection unrun (CLIENT PAUSE WRITE), then that
    connection is cut, and what it sent with it. The connection must be open and idle."""
    records = qos._record_connection
    records.send_command("CLIENT", "ID")
    records_id = records.read_response()
    admin = redis_client()
    admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    try:
        send()
        admin.client_kill_filter(_id=records_id)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")


def test_a_record_is_written_and_an_acknowledgement_removes_it():
    with current_app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        tag = uuid.uuid4().hex
        channel.qos.append(_fetched(channel, tag), tag)
        channel.qos.restore_visible()  # (what the consumer calls every few seconds: reads the record's answer)
        # Another process (a worker's housekeeping giving back a dead worker's messages) sees it.
        assert redis_client().hget("unacked", tag) is not None
        assert redis_client().zscore("unacked_index", tag) is not None
        channel.qos.ack(tag)
        channel.qos.restore_visible()  # (reads the acknowledgement's answer, also sent without waiting)
        assert redis_client().hget("unacked", tag) is None
        assert redis_client().zscore("unacked_index", tag) is None
        assert redis_client().hget("unacked_owner", tag) is None


def test_a_record_whose_connection_broke_before_redis_ran_it_is_written_again():
    # Redis holds the record's transaction unrun (CLIENT PAUSE WRITE), then the connection that sent it is
    # cut, and the transaction with it. The next look at the records (here: the next message's) finds the
    # answer missing and writes the record again, before anything else touches the records.
    with current_app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        qos = channel.qos
        earlier, lost, later = (uuid.uuid4().hex for _ in range(3))
        qos.append(_fetched(channel, earlier), earlier)
        qos.ack(earlier)
        qos.restore_visible()  # (the records' connection is open and idle now)
        _cut_unrun(qos, lambda: qos.append(_fetched(channel, lost), lost))
        admin = redis_client()
        assert admin.hget("unacked", lost) is None  # (gone with its connection)

        qos.append(_fetched(channel, later), later)
        assert admin.hget("unacked", lost) is not None and admin.zscore("unacked_index", lost) is not None
        assert admin.hget("unacked", later) is not None
        for tag in (lost, later):
            qos.ack(tag)
            qos.restore_visible()
            assert admin.hget("unacked", tag) is None


def test_an_acknowledgement_whose_connection_broke_before_redis_ran_it_is_written_again():
    # As a record: the acknowledgement is sent without waiting, Redis holds it unrun, its connection is cut.
    # The next look at the records sends it again, so the message is not handed out again an hour later.
    with current_app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        qos = channel.qos
        tag = uuid.uuid4().hex
        qos.append(_fetched(channel, tag), tag)
        qos.restore_visible()
        _cut_unrun(qos, lambda: qos.ack(tag))
        admin = redis_client()
        assert admin.hget("unacked", tag) is not None  # (gone with its connection)

        qos.restore_visible()
        assert admin.hget("unacked", tag) is None and admin.zscore("unacked_index", tag) is None
        assert admin.hget("unacked_owner", tag) is None
