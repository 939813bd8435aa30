"""AsyncAPI 3.0 for what OpenAPI cannot describe: the WebSocket protocol at `/ws/` and the run events, which
are the same on the WebSocket and on `GET /api/runs/{id}/events/` (Server-Sent Events). Served at
`GET /api/asyncapi.json`; `manage.py asyncapi` prints it.

The document describes the gateway: it receives requests (`action: receive`, each with its reply) and
sends events (`action: send`). It is generated from the code, so it cannot drift silently:

- one operation per method the consumer serves (`GatewayConsumer.METHODS`) and one message per event it
  forwards (`consumers.EVENTS`); a method or event without a description here fails the generation, and
  with it tests/test_api_schema.py;
- payloads that are serializer output (agents, sessions, messages, runs, approvals, compactions) are the
  components drf-spectacular makes of those serializers, taken from the OpenAPI document and turned from
  OpenAPI 3.0 into JSON Schema (`nullable` becomes a null type), so they follow the serializers;
- enums (statuses, queue modes) come from the models.

The run event payloads are described as the workers publish them (sessions/runs/, tools/approvals.py).
The WebSocket adds `run_id` to a run's event payloads and puts `seq` beside them; SSE puts `seq` inside
the `data:` JSON.
"""

import copy
import functools
import json
from dataclasses import dataclass

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from sessions import events
from sessions.consumers import CONNECT_TIMEOUT_SECONDS, EVENTS, MAX_FRAME_BYTES, PROTOCOL_VERSION, GatewayConsumer
from sessions.models import AgentSession, Run, ToolCall
from sessions.serializers import (
    CompactionSerializer,
    MessageSerializer,
    RunSerializer,
    SessionResetSerializer,
    SessionSerializer,
)
from tenants.serializers import AgentSerializer
from tools import approvals
from tools.models import Approval
from tools.serializers import ApprovalSerializer

ASYNCAPI_VERSION = "3.0.0"
# Serializers whose output is a method's payload: their drf-spectacular components are copied in.
SERIALIZERS = (AgentSerializer, SessionSerializer, SessionResetSerializer, MessageSerializer, RunSerializer,
               ApprovalSerializer, CompactionSerializer)

# --- JSON Schema building blocks ---------------------------------------------------------------------


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict, *, required=(), description: str = "") -> dict:
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def string(description: str = "", **extra) -> dict:
    return {"type": "string", **extra, **({"description": description} if description else {})}


def integer(description: str = "", **extra) -> dict:
    return {"type": "integer", **extra, **({"description": description} if description else {})}


def uuid(description: str = "", *, null: bool = False) -> dict:
    return {"type": ["string", "null"] if null else "string", "format": "uuid",
            **({"description": description} if description else {})}


def one_of_values(values, description: str = "") -> dict:
    return {"type": "string", "enum": list(values), **({"description": description} if description else {})}


def limit(default: int = 100, maximum: int = 1000) -> dict:
    return integer(f"How many, newest first; {default} if left out.", minimum=1, maximum=maximum, default=default)


ANY = {"description": "Any JSON value."}
EMPTY_PARAMS = obj({}, description="No parameters.")
SESSION_PARAM = {"session": uuid("A session of this tenant.")}

# --- the shared schemas ------------------------------------------------------------------------------

SCHEMAS = {
    "TokenUsage": obj({"input_tokens": integer(minimum=0), "output_tokens": integer(minimum=0)},
                      required=("input_tokens", "output_tokens")),
    "ContentPart": {
        "oneOf": [
            obj({"type": {"const": "text"}, "text": string()}, required=("type", "text")),
            obj({"type": {"const": "image_url"},
                 "image_url": obj({"url": string("An http(s) URL or a data URL data:image/...;base64,...")},
                                  required=("url",))},
                required=("type", "image_url")),
            obj({"type": {"const": "image"},
                 "source": obj({"type": one_of_values(["url", "base64"]), "url": string(), "media_type": string(),
                                "data": string()}, required=("type",))},
                required=("type", "source")),
        ],
    },
    "Content": {
        "description": "A string, or text and image parts (OpenAI's `image_url` or Anthropic's `image`); at most "
                       "250,000 characters of text.",
        "oneOf": [string(minLength=1), {"type": "array", "items": ref("ContentPart"), "minItems": 1}],
    },
    "Block": {"type": "object", "properties": {"type": string()}, "required": ["type"],
              "description": "A transcript content block (Anthropic's: text, image, tool_use, tool_result, ...)."},
    "HealthCheck": obj({"ok": {"type": "boolean"}, "error": string(), "count": integer(), "names": {"type": "array", "items": string()}},
                       required=("ok",)),
    "ErrorBody": obj(
        {
            "code": string("Stable, for programs: bad_frame, unknown_method, invalid_params, not_found, conflict, "
                           "insufficient_scope, rate_limited, unavailable, already_connected, compaction_pending, "
                           "connect_required, invalid_api_key, tenant_suspended, timeout, frame_too_large, ..."),
            "message": string("What went wrong, for a person to read."),
            "retry_after": integer("Seconds; with `unavailable` and `rate_limited`.", minimum=0),
        },
        required=("code", "message"),
    ),
}

# --- the methods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    summary: str
    params: dict
    payload: dict
    description: str = ""


METHODS = {
    "connect": Method(
        "Authenticate the socket: the first frame",
        obj({"token": string("An API key.")}, required=("token",)),
        obj(
            {
                "protocol": {"const": PROTOCOL_VERSION},
                "tenant": string("The tenant's slug."),
                "methods": {"type": "array", "items": string(), "description": "The methods this key may call."},
                "scopes": {"type": "array", "items": string()},
                "events": {"type": "array", "items": string(), "description": "The events the socket may receive."},
            },
            required=("protocol", "tenant", "methods", "scopes", "events"),
        ),
        f"The first frame must be this request, within {CONNECT_TIMEOUT_SECONDS} s. A refused key closes the socket "
        "(4401 bad key, 4403 tenant suspended, 4429 rate limited) after an error response; 4400 when the first "
        "frame is anything else, 4408 when none came in time. Sent again on a connected socket: `already_connected`.",
    ),
    "health": Method(
        "The gateway's dependencies, as GET /health",
        EMPTY_PARAMS,
        obj({"status": one_of_values(["ok", "degraded"]),
             "checks": obj({name: ref("HealthCheck") for name in ("database", "redis", "workers")},
                           required=("database", "redis", "workers")),
             "uptime_seconds": integer()},
            required=("status", "checks")),
    ),
    "agents.list": Method(
        "The tenant's agents", EMPTY_PARAMS,
        obj({"agents": {"type": "array", "items": ref("Agent")}}, required=("agents",)),
    ),
    "sessions.list": Method(
        "The tenant's sessions, most recently updated first",
        obj({"agent": string("An agent's slug."), "status": one_of_values(AgentSession.Status.values), "limit": limit()}),
        obj({"sessions": {"type": "array", "items": ref("Session")}}, required=("sessions",)),
    ),
    "sessions.create": Method(
        "Create a session (or get the one with this key)",
        obj({"agent": string("An agent's slug."),
             "key": {"type": ["string", "null"], "description": "A name: the session is `agent:<agent>:<key>`."},
             "queue_mode": one_of_values(AgentSession.QueueMode.values)},
            required=("agent",)),
        ref("Session"),
    ),
    "sessions.history": Method(
        "A session's transcript, oldest first",
        obj({**SESSION_PARAM, "after_seq": integer("Only messages after this seq.", minimum=0, default=0),
             "limit": limit()}, required=("session",)),
        obj({"session": uuid(), "messages": {"type": "array", "items": ref("Message")}}, required=("session", "messages")),
    ),
    "sessions.reset": Method(
        "Empty the transcript; the old one moves to a closed archive session",
        obj(SESSION_PARAM, required=("session",)), ref("SessionReset"),
    ),
    "sessions.subscribe": Method(
        "Follow a session: every run of it streams its events to this socket",
        obj(SESSION_PARAM, required=("session",)),
        obj({"session": uuid(), "active_run": uuid("The run going on now, whose events follow.", null=True)},
            required=("session", "active_run")),
    ),
    "sessions.compact": Method(
        "Summarize the session's older turns now (needs the chat scope)",
        obj(SESSION_PARAM, required=("session",)), ref("Compaction"),
        "Errors: `conflict` while a run is active or when there is nothing to compact; `compaction_pending` when "
        "the summary takes longer than the request waits (it goes on).",
    ),
    "chat.send": Method(
        "Send a message: starts (or queues) a run, whose events follow on this socket",
        obj({**SESSION_PARAM, "message": ref("Content"),
             "mode": one_of_values(AgentSession.QueueMode.values, "What to do when the session has a run already.")},
            required=("session", "message")),
        obj({"run_id": uuid(), "session": uuid(), "status": one_of_values(Run.Status.values)},
            required=("run_id", "session", "status")),
        "The response comes before any event of the run. The socket follows the session from now on.",
    ),
    "chat.abort": Method(
        "Abort a run: `run_id`, or the session's active run",
        obj({"run_id": uuid(), **SESSION_PARAM}, description="`run_id` or `session`."),
        ref("Run"),
    ),
    "approvals.list": Method(
        "The tenant's approvals, newest first",
        obj({"status": {"type": ["string", "null"], "enum": [*Approval.Status.values, None], "default": "pending",
                        "description": "null: every status."},
             "limit": limit()}),
        obj({"approvals": {"type": "array", "items": ref("Approval")}}, required=("approvals",)),
    ),
    "approvals.resolve": Method(
        "Allow or deny a pending tool call",
        obj({"approval": uuid(), "decision": one_of_values(["allow", "deny"]),
             "always": {"type": "boolean", "default": False,
                        "description": "With allow: add this call's exact pattern to the agent's allowlist."}},
            required=("approval", "decision")),
        ref("Approval"),
    ),
}

# --- the run events ----------------------------------------------------------------------------------

RUN_ID = uuid("The run.")
STEP = integer("The run's model call this belongs to, from 0.", minimum=0)
TOOL_CALL_FIELDS = {
    "call_id": integer("The tool call's id."),
    "tool_use_id": string("The model's id for the call; a client tool's call has this id on /v1 too."),
    "name": string("The tool."),
    "step": STEP,
    "status": one_of_values(ToolCall.Status.values),
}
APPROVAL_EVENT = obj(
    {
        "approval_id": uuid(),
        "status": one_of_values(Approval.Status.values),
        "tool": string(),
        "input": {"type": "object", "description": "The call's input, as the approver sees it."},
        "subject": string("What the allowlist is matched against, e.g. the command."),
        "session_id": uuid(null=True),
        "tool_call_id": {"type": ["integer", "null"], "description": "For a model's call (else an invocation)."},
        "invocation_id": uuid("For POST /api/tools/invoke.", null=True),
        "expires_at": string(format="date-time"),
        "decided_by": string(),
        "reason": string(),
    },
    required=("approval_id", "status", "tool", "input", "subject", "session_id", "tool_call_id", "invocation_id",
              "expires_at", "decided_by", "reason"),
)
RUN_ENDED = obj(
    {"run_id": RUN_ID, "error": string("Why, for a person to read."),
     "code": string("e.g. overloaded, rate_limited, auth, timeout, step_limit; empty when unknown."),
     "usage": ref("TokenUsage")},
    required=("run_id", "error", "code", "usage"),
)


@dataclass(frozen=True)
class Event:
    summary: str
    payload: dict


EVENT_PAYLOADS = {
    events.RUN_STARTED: Event(
        "The run began: its user message is in the transcript",
        obj({"run_id": RUN_ID, "session_id": uuid()}, required=("run_id", "session_id")),
    ),
    events.TEXT_DELTA: Event(
        "The next piece of the reply's text",
        obj({"text": string(), "step": STEP}, required=("text", "step")),
    ),
    events.TOOL_CALL: Event(
        "The model called a tool",
        obj({**TOOL_CALL_FIELDS, "input": {"type": "object", "description": "The call's arguments."}},
            required=("call_id", "tool_use_id", "name", "input", "step", "status")),
    ),
    events.TOOL_RESULT: Event(
        "A tool call settled (ran, failed or was denied)",
        obj({**TOOL_CALL_FIELDS, "output": {**ANY, "description": "The tool's result (usually an object with ok)."}},
            required=("call_id", "tool_use_id", "name", "step", "status", "output")),
    ),
    approvals.APPROVAL_REQUESTED: Event("A tool call waits for a human's decision", APPROVAL_EVENT),
    approvals.APPROVAL_RESOLVED: Event("A pending tool call was allowed, denied or expired", APPROVAL_EVENT),
    events.COMPACTION: Event(
        "Older turns of the session were summarized before a model call",
        {"allOf": [ref("Compaction"), obj({"step": STEP}, required=("step",))]},
    ),
    events.RUN_COMPLETED: Event(
        "The run ended with the model's reply, or handed calls of the client's own tools to the client",
        obj(
            {
                "run_id": RUN_ID,
                "message": {
                    "oneOf": [
                        obj({"seq": integer(), "role": {"const": "assistant"},
                             "content": {"type": "array", "items": ref("Block")}},
                            required=("seq", "role", "content")),
                        {"type": "null"},
                    ],
                    "description": "The reply as stored in the transcript.",
                },
                "text": string("The reply's text (in JSON mode: the checked JSON)."),
                "stop_reason": {"type": ["string", "null"],
                                "description": "end_turn, tool_use, max_tokens or stop_sequence."},
                "tool_calls": {
                    "type": "array",
                    "items": obj({"id": string("The tool_use id: a Chat Completions tool_call id, a Responses "
                                               "call_id."),
                                  "name": string(), "input": {"type": "object"}},
                                 required=("id", "name", "input")),
                    "description": "Calls of the client's own tools (OpenAI `tools`), for the client to answer.",
                },
                "model": string("The model that answered (a fallback's, if it came to that)."),
                "usage": ref("TokenUsage"),
                "merged_into": uuid("A message sent in `steer` mode: the run it joined (its own run ends here)."),
                "step": STEP,
                "error": string(),
                "code": string(),
            },
            required=("run_id", "usage"),
            description="`message`, `text`, `stop_reason` and `model` are there for a run that answered; a replayed "
                        "run whose live stream expired carries `message`, `text`, `step`, `error` and `code`.",
        ),
    ),
    events.RUN_FAILED: Event("The run failed", RUN_ENDED),
    events.RUN_ABORTED: Event("The run was aborted", RUN_ENDED),
    events.STREAM_INTERRUPTED: Event(
        "The live stream was lost and the text streamed so far is not the start of the final reply",
        obj({"run_id": RUN_ID, "code": string(), "error": string()}, required=("run_id", "code", "error")),
    ),
}


# --- OpenAPI components -> JSON Schema ---------------------------------------------------------------


def openapi_to_json_schema(node):
    """An OpenAPI 3.0 schema as JSON Schema: `nullable: true` becomes a null type (or an anyOf with null)."""
    if isinstance(node, list):
        return [openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: openapi_to_json_schema(value) for key, value in node.items() if key != "nullable"}
    if not node.get("nullable"):
        return schema
    if "type" in schema:
        schema["type"] = [schema["type"], "null"]
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _refs(node) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_refs(value) for value in node.values()))


def _serializer_schemas() -> dict:
    """The drf-spectacular components of SERIALIZERS and of everything they refer to."""
    from drf_spectacular.generators import SchemaGenerator

    components = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]
    wanted = [serializer.__name__.removesuffix("Serializer") for serializer in SERIALIZERS]
    missing = [name for name in wanted if name not in components]
    if missing:
        raise LookupError(f"No OpenAPI component for {missing}: was a serializer renamed? (sessions/asyncapi.py)")
    taken: dict = {}
    while wanted:
        name = wanted.pop()
        if name not in taken:
            taken[name] = openapi_to_json_schema(components[name])
            wanted.extend(_refs(components[name]))
    return taken


# --- the document ------------------------------------------------------------------------------------


def _message_ref(channel: str, name: str) -> dict:
    return {"$ref": f"#/channels/{channel}/messages/{name}"}


def camel(name: str) -> str:
    """A component name from a method or event name: `sessions.list` -> `SessionsList`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("."))


REQUEST_ID = {"type": ["string", "integer"], "description": "Chosen by the client; the response carries it back."}
CORRELATION = {"location": "$message.payload#/id"}


def _method_schemas(method: str, spec: Method) -> dict:
    """Named schemas of a method's frames (generated models take their names from them)."""
    name = camel(method)
    # A payload that is a component already (a serializer's) is used as it is, not renamed.
    result = spec.payload if "$ref" in spec.payload else ref(f"{name}Result")
    schemas = {
        f"{name}Params": spec.params,
        f"{name}Request": obj(
            {"type": {"const": "req"}, "id": REQUEST_ID, "method": {"const": method}, "params": ref(f"{name}Params")},
            required=("type", "id", "method"),
        ),
        f"{name}Response": obj(
            {"type": {"const": "res"}, "id": REQUEST_ID, "ok": {"const": True}, "payload": result},
            required=("type", "id", "ok", "payload"),
        ),
    }
    if "$ref" not in spec.payload:
        schemas[f"{name}Result"] = spec.payload
    return schemas


def _event_schemas(event: str, spec: Event) -> dict:
    """An event's payload, its WebSocket frame, and its SSE `data:`."""
    name = camel(event)
    return {
        f"{name}Event": spec.payload,
        f"{name}EventFrame": obj(
            {
                "type": {"const": "event"},
                "event": {"const": event},
                "payload": {"allOf": [ref(f"{name}Event"),
                                      obj({"run_id": uuid("The run; added to every event of a run's stream.")})]},
                "seq": {"type": ["integer", "null"], "minimum": 1,
                        "description": "The event's place in its run's stream; null for an approval event of a run "
                                       "this socket does not follow (sent to keys with the read scope)."},
            },
            required=("type", "event", "payload", "seq"),
        ),
        f"{name}EventData": {"allOf": [ref(f"{name}Event"),
                                       obj({"seq": integer("The event's place in the run's stream.", minimum=1)},
                                           required=("seq",))]},
    }


FRAME_SCHEMAS = {
    "ErrorResponse": obj(
        {"type": {"const": "res"},
         "id": {"type": ["string", "integer", "null"], "description": "null when the frame could not be read."},
         "ok": {"const": False}, "error": ref("ErrorBody")},
        required=("type", "id", "ok", "error"),
    ),
    "StreamErrorData": obj({"error": string()}, required=("error",)),
}


def _request_message(method: str, spec: Method) -> dict:
    return {
        "name": method,
        "title": f"{method} request",
        "summary": spec.summary,
        **({"description": spec.description} if spec.description else {}),
        "correlationId": CORRELATION,
        "payload": ref(f"{camel(method)}Request"),
    }


def _response_message(method: str) -> dict:
    return {"name": f"{method}.response", "title": f"{method} response", "correlationId": CORRELATION,
            "payload": ref(f"{camel(method)}Response")}


ERROR_RESPONSE = {
    "name": "error.response",
    "title": "Error response",
    "summary": "A request was refused; before the server closes a socket it sends one of these too.",
    "correlationId": CORRELATION,
    "payload": ref("ErrorResponse"),
}


def _event_message(event: str, spec: Event) -> dict:
    return {"name": event, "title": event, "summary": spec.summary, "payload": ref(f"{camel(event)}EventFrame")}


def _sse_message(event: str, spec: Event) -> dict:
    return {
        "name": event,
        "title": event,
        "summary": spec.summary,
        "description": f"`id: <seq>`, `event: {event}`, `data: <this JSON>`.",
        "payload": ref(f"{camel(event)}EventData"),
    }


SSE_ERROR = {
    "name": "error",
    "title": "error",
    "summary": "The run produced no event for too long; the stream ends (the run may go on).",
    "payload": ref("StreamErrorData"),
}

WEBSOCKET_DESCRIPTION = (
    "JSON text frames. The client sends requests `{\"type\": \"req\", \"id\", \"method\", \"params\"}`; each gets one "
    "response `{\"type\": \"res\", \"id\", \"ok\": true, \"payload\"}` or `{\"type\": \"res\", \"id\", \"ok\": false, "
    "\"error\": {\"code\", \"message\"}}`. Run events arrive as `{\"type\": \"event\", \"event\", \"payload\", "
    "\"seq\"}` for every run of the sessions the socket sent to (`chat.send`) or follows (`sessions.subscribe`), "
    "in seq order. The first frame must be `connect`. Frames over "
    f"{MAX_FRAME_BYTES} bytes close the socket with 1009; 4503 closes a connect when Redis or PostgreSQL is "
    "unavailable (a later request gets `unavailable` with `retry_after`). The key is checked on every request: "
    "a revoked key closes the socket."
)
SSE_DESCRIPTION = (
    "Server-Sent Events of one run: `id:` is the event's seq, `event:` its name, `data:` its payload with `seq`. "
    "Tails a live run and replays a finished one; the stream ends after the run's terminal event. Resume with "
    "the Last-Event-ID header or `?after=<seq>`. Needs the read scope (`Authorization: Bearer <api key>`)."
)


def _operations() -> dict:
    operations = {}
    for method, spec in _described(METHODS, GatewayConsumer.METHODS, "method").items():
        operations[method] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/gateway"},
            "title": method,
            "summary": spec.summary,
            "tags": [{"name": "websocket"}],
            "messages": [_message_ref("gateway", f"{method}.request")],
            "reply": {"channel": {"$ref": "#/channels/gateway"},
                      "messages": [_message_ref("gateway", f"{method}.response"),
                                   _message_ref("gateway", "error.response")]},
        }
    operations["runEvents"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/gateway"},
        "summary": "Events of the runs the socket follows, and the tenant's approval events",
        "tags": [{"name": "websocket"}],
        "messages": [_message_ref("gateway", f"{event}.event") for event in EVENTS],
    }
    operations["runEventStream"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/runEvents"},
        "summary": "One run's events as Server-Sent Events",
        "tags": [{"name": "sse"}],
        "messages": [_message_ref("runEvents", event) for event in EVENTS] + [_message_ref("runEvents", "error")],
    }
    return operations


def _described(specs: dict, served, what: str) -> dict:
    """The specs of everything served, in the order served; anything served without a spec is an error."""
    missing = [name for name in served if name not in specs]
    if missing:
        raise LookupError(f"The WebSocket serves {what}s {missing} that sessions/asyncapi.py does not describe.")
    return {name: specs[name] for name in served}


def _merged(*parts: dict) -> dict:
    """Component schemas from several sources; a name given twice is an error, not an overwrite."""
    merged: dict = {}
    for part in parts:
        clashes = sorted(set(merged) & set(part))
        if clashes:
            raise ValueError(f"AsyncAPI schema names used twice: {clashes} (sessions/asyncapi.py)")
        merged.update(part)
    return merged


@functools.cache
def _document() -> dict:
    methods = _described(METHODS, GatewayConsumer.METHODS, "method")
    event_specs = _described(EVENT_PAYLOADS, EVENTS, "event")
    gateway_messages = {}
    for method, spec in methods.items():
        gateway_messages[f"{method}.request"] = _request_message(method, spec)
        gateway_messages[f"{method}.response"] = _response_message(method)
    gateway_messages["error.response"] = ERROR_RESPONSE
    for event, spec in event_specs.items():
        gateway_messages[f"{event}.event"] = _event_message(event, spec)
    sse_messages = {event: _sse_message(event, spec) for event, spec in event_specs.items()}
    sse_messages["error"] = SSE_ERROR
    schemas = _merged(
        _serializer_schemas(),
        SCHEMAS,
        FRAME_SCHEMAS,
        *(_method_schemas(method, spec) for method, spec in methods.items()),
        *(_event_schemas(event, spec) for event, spec in event_specs.items()),
    )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"{settings.SPECTACULAR_SETTINGS['TITLE']}: WebSocket and run events",
            "version": settings.SPECTACULAR_SETTINGS["VERSION"],
            "description": (
                f"The WebSocket protocol (version {PROTOCOL_VERSION}) and the run event stream. This document "
                "describes the gateway: it receives requests and replies, and sends events. The REST API and the "
                "OpenAI-compatible /v1 are in the OpenAPI document at /api/schema/."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "gateway": {
                "address": "/ws/",
                "title": "WebSocket",
                "description": WEBSOCKET_DESCRIPTION,
                "servers": [{"$ref": "#/servers/websocket"}],
                "messages": gateway_messages,
            },
            "runEvents": {
                "address": "/api/runs/{run_id}/events/",
                "title": "Run event stream (SSE)",
                "description": SSE_DESCRIPTION,
                "servers": [{"$ref": "#/servers/http"}],
                "parameters": {"run_id": {"description": "The run's id (a UUID)."}},
                "messages": sse_messages,
            },
        },
        "operations": _operations(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key, bc_<prefix>_<secret>."},
            },
        },
    }


def asyncapi_document(*, host: str = "localhost:8000", secure: bool = False) -> dict:
    """The document, with servers at `host` (what the client connected to)."""
    document = copy.deepcopy(_document())
    document["servers"] = {
        "websocket": {"host": host, "protocol": "wss" if secure else "ws",
                      "description": "The WebSocket: authenticated by the connect frame's token."},
        "http": {"host": host, "protocol": "https" if secure else "http",
                 "security": [{"$ref": "#/components/securitySchemes/apiKey"}]},
    }
    return document


@csrf_exempt  # an API client has no CSRF cookie: a POST gets the JSON 405, not Django's HTML 403
def asyncapi_view(request):
    """GET /api/asyncapi.json, without authentication, like the OpenAPI document at /api/schema/."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(
            {"detail": f"Method {request.method} not allowed.", "code": "method_not_allowed"}, status=405
        )
        response["Allow"] = "GET, HEAD"
        return response
    document = asyncapi_document(host=request.get_host(), secure=request.is_secure())
    return JsonResponse(document)


def asyncapi_json(**kwargs) -> str:
    return json.dumps(asyncapi_document(**kwargs), indent=2)
