"""The `cron` tool: an agent lists, adds and removes its own jobs.

CronConfig.ready() registers CRON_TOOL_SPEC with the tool registry (tools/); tool policy and approvals apply
there as for any tool. The tool only ever sees the calling agent's jobs, and validates input exactly as
the REST API does (same serializer).
"""

from cron.selectors import cron_jobs_of
from cron.serializers import CronJobInputSerializer, CronJobSerializer
from cron.services import CronJobGone, CronJobInvalid, CronJobLimitReached, cron_job_create, cron_job_delete
from tools.base import ToolContext, ToolSpec

CRON_TOOL = {
    "name": "cron",
    "description": (
        "Manage your own scheduled jobs: each job sends you `prompt` on its schedule. "
        "action=list shows your jobs; action=add creates one (name, prompt, schedule); "
        "action=remove deletes one by id or name. Schedules: "
        '{"kind": "at", "at": "2030-01-31T09:00:00Z"} (once; or "at": "20m" from now), '
        '{"kind": "every", "every": "15m"} (30s, 2h, 1d, 1h30m; optional "anchor"), '
        '{"kind": "cron", "expr": "0 9 * * 1-5", "tz": "Europe/Berlin"}. '
        'session_target "main" runs in your main conversation, "isolated" in a fresh one each time.'
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["list", "add", "remove"]},
            "id": {"type": "integer", "description": "remove: the job's id"},
            "name": {"type": "string", "description": "add: a name unique among your jobs; remove: the job's name"},
            "prompt": {"type": "string", "description": "add: the message you will receive on each run"},
            "schedule": {
                "type": "object",
                "description": "add: when to run",
                "properties": {
                    "kind": {"type": "string", "enum": ["at", "every", "cron"]},
                    "at": {"type": "string"},
                    "every": {"type": "string"},
                    "anchor": {"type": "string"},
                    "expr": {"type": "string"},
                    "tz": {"type": "string"},
                },
                "required": ["kind"],
            },
            "session_target": {"type": "string", "enum": ["main", "isolated"]},
            "deliver": {
                "type": "object",
                "description": (
                    'add: where the final reply is also sent: {"kind": "webhook", "url": ...} or '
                    '{"kind": "channel", "channel": <your channel\'s id>, "to": "<recipient on it>"}'
                ),
                "properties": {
                    "kind": {"type": "string", "enum": ["webhook", "channel"]},
                    "url": {"type": "string"},
                    "channel": {"type": "integer"},
                    "to": {"type": "string"},
                },
            },
            "enabled": {"type": "boolean"},
        },
        "required": ["action"],
    },
}


def _error(message: str) -> dict:
    return {"ok": False, "output": message}


def _flatten(errors, prefix: str = "") -> list[str]:
    if isinstance(errors, dict):
        return [line for key, value in errors.items() for line in _flatten(value, f"{prefix}{key}.")]
    if isinstance(errors, list):
        return [line for value in errors for line in _flatten(value, prefix)]
    return [f"{prefix.rstrip('.')}: {errors}" if prefix else str(errors)]


def run_cron_tool(*, tenant, agent, session, input: dict) -> dict:
    """Run one action for `agent`. `session` is the calling session (unused: jobs target main or isolated)."""
    if not isinstance(input, dict):
        return _error("Input must be an object with an 'action'.")
    action = input.get("action")
    if action == "list":
        jobs = cron_jobs_of(tenant=tenant, agent=agent)
        return {"ok": True, "output": CronJobSerializer(jobs, many=True).data}
    if action == "add":
        return _add(tenant, agent, {k: v for k, v in input.items() if k != "action"})
    if action == "remove":
        return _remove(tenant, agent, input)
    return _error("'action' must be one of list, add, remove.")


def _add(tenant, agent, fields: dict) -> dict:
    if fields.get("agent", agent.slug) != agent.slug:
        return _error("You can only manage your own jobs.")
    data = CronJobInputSerializer(data={**fields, "agent": agent.slug}, context={"tenant": tenant})
    if not data.is_valid():
        return _error("Invalid input: " + "; ".join(_flatten(data.errors)))
    try:
        job = cron_job_create(tenant=tenant, **data.validated_data)
    except CronJobInvalid as exc:
        return _error(f"Invalid input: {exc.field}: {exc.message}")
    except CronJobLimitReached as exc:
        return _error(exc.message)
    return {"ok": True, "output": CronJobSerializer(job).data}


def _remove(tenant, agent, fields: dict) -> dict:
    jobs = cron_jobs_of(tenant=tenant, agent=agent)
    if fields.get("id") is not None:
        job = jobs.filter(pk=fields["id"]).first() if str(fields["id"]).isdigit() else None
    elif fields.get("name"):
        job = jobs.filter(name=fields["name"]).first()
    else:
        return _error("remove needs 'id' or 'name'.")
    if job is None:
        return _error("You have no such job; action=list shows your jobs.")
    removed = {"id": job.pk, "name": job.name}
    try:
        cron_job_delete(job=job)
    except CronJobGone:
        return _error("You have no such job; action=list shows your jobs.")
    return {"ok": True, "output": {"removed": removed}}



def _run(context: ToolContext, tool_input: dict) -> dict:
    return run_cron_tool(tenant=context.tenant, agent=context.agent, session=context.session, input=tool_input)


CRON_TOOL_SPEC = ToolSpec(
    name=CRON_TOOL["name"],
    description=CRON_TOOL["description"],
    input_schema=CRON_TOOL["input_schema"],
    group="group:automation",
    run=_run,
    subject=lambda tool_input: str(tool_input.get("action", "")),
)
