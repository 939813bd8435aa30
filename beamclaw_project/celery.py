"""The Celery app. Work is routed per tenant: each task is sent to its tenant's queue explicitly
(queue names: beamclaw_project/infra/queues.py), system work goes to the `system` queue. Every task's
base class is infra.tasks.ContextTask (tenant/session/run ids in its log lines)."""

import os

from celery import Celery

from beamclaw_project.infra.log_context import celery_worker_output_to_json
from beamclaw_project.infra.tasks import ContextTask

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beamclaw_project.settings")

app = Celery("beamclaw", task_cls=ContextTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
celery_worker_output_to_json()  # the worker's banner and shutdown lines as JSON lines (docs/metrics.md)
