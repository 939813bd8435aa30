"""The tasks every run sends skip Celery's publishing machinery (infra/tasks.task_send): the message they
push must be the one `send_task` would, or workers would run them differently (every step of every run in
the suite is sent this way, and runs)."""

import uuid

from celery import current_app

from beamclaw_project.infra.queues import WORK_PRIORITY, tenant_queue
from beamclaw_project.infra.tasks import task_send, tasks_send
from sessions.runs.kernel import RUN_STEP_TASK
from tests.conftest import queued_message_pop

# Differ by nature from one message to the next.
UNIQUE_HEADERS = {"id", "root_id"}
UNIQUE_PROPERTIES = {"correlation_id", "delivery_tag"}


def test_a_run_step_is_sent_as_celery_would_send_it():
    queue = tenant_queue(f"send-{uuid.uuid4().hex[:8]}")  # (no such tenant: no worker consumes it)
    args = [str(uuid.uuid4()), 2]
    current_app.send_task(RUN_STEP_TASK, args=args, queue=queue, priority=WORK_PRIORITY)
    celery_message = queued_message_pop(queue, WORK_PRIORITY)
    task_send(RUN_STEP_TASK, args, queue=queue, priority=WORK_PRIORITY)
    ours = queued_message_pop(queue, WORK_PRIORITY)

    assert ours["body"] == celery_message["body"] == [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    assert {k: v for k, v in ours["headers"].items() if k not in UNIQUE_HEADERS} == {
        k: v for k, v in celery_message["headers"].items() if k not in UNIQUE_HEADERS
    }
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["headers"]["argsrepr"].startswith(f"tenant={queue.removeprefix('tenant.')} run={args[0]} step=2")
    assert {k: v for k, v in ours["properties"].items() if k not in UNIQUE_PROPERTIES} == {
        k: v for k, v in celery_message["properties"].items() if k not in UNIQUE_PROPERTIES
    }
    assert {k: v for k, v in ours.items() if k not in ("headers", "properties")} == {
        k: v for k, v in celery_message.items() if k not in ("headers", "properties")
    }


def test_tasks_sent_together_are_the_messages_sent_one_by_one():
    queues = [tenant_queue(f"send-{uuid.uuid4().hex[:8]}") for _ in range(2)]
    sent = [(RUN_STEP_TASK, [str(uuid.uuid4()), 0], queues[0], WORK_PRIORITY), ("cron.settle", [7], queues[1], 0)]
    for name, args, queue, priority in sent:
        task_send(name, args, queue=queue, priority=priority)
    one_by_one = [queued_message_pop(queue, priority) for _, _, queue, priority in sent]
    tasks_send(sent)
    together = [queued_message_pop(queue, priority) for _, _, queue, priority in sent]

    for ours, single in zip(together, one_by_one):
        assert ours["body"] == single["body"]
        assert {k: v for k, v in ours["headers"].items() if k not in UNIQUE_HEADERS} == {
            k: v for k, v in single["headers"].items() if k not in UNIQUE_HEADERS
        }
        assert {k: v for k, v in ours["properties"].items() if k not in UNIQUE_PROPERTIES} == {
            k: v for k, v in single["properties"].items() if k not in UNIQUE_PROPERTIES
        }
