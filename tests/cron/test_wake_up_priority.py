"""A cron job falling due while its tenant's queue holds run steps is woken before them.

Before, a tenant's queue was first come, first served: an `every` job falling due just after a burst of
its tenant's runs waited behind their steps (about 15 s in bench/cron_bench.py). Run steps, tool calls
and compaction now travel one priority step behind the short tasks (beamclaw_project/infra/queues.py).
"""

import uuid

from kombu import Queue

from beamclaw_project.celery import app
from beamclaw_project.infra.queues import tenant_queue
from cron.tasks import fire
from sessions.runs.kernel import RUN_STEP_TASK, first_steps_send
from sessions.runs.tool_phase import RUN_CALLS
from tools.runner import KIND_MODEL_CALL, call_enqueue


def test_a_wake_up_is_handed_out_before_the_run_steps_and_tool_calls_queued_ahead_of_it():
    # A queue no worker consumes (no tenant has this slug), so the messages wait here to be read in order.
    slug = f"unserved-{uuid.uuid4().hex[:8]}"
    run_ids = [uuid.uuid4() for _ in range(3)]
    first_steps_send(run_ids, slug)
    call_id = uuid.uuid4()
    call_enqueue(KIND_MODEL_CALL, call_id, tenant_slug=slug, tool="exec", tool_input={"command": "true"})
    fire.apply_async(args=[123], queue=tenant_queue(slug))  # as beat sends it (its PeriodicTask sets no priority)

    handed_out = []
    with app.connection_for_read() as connection:
        queue = Queue(tenant_queue(slug)).bind(connection.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            args, _, _ = message.decode()
            handed_out.append((message.headers["task"], args[0]))
    # The wake-up first; the work behind it keeps its own order.
    assert handed_out == [
        ("cron.fire", 123), *((RUN_STEP_TASK, str(run_id)) for run_id in run_ids), (RUN_CALLS.task_name, str(call_id))
    ]
