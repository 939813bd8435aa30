"""OpenAPI for the one REST endpoint that is not a DRF view: the run event stream (SSE). The events' payloads
are in the AsyncAPI document (sessions/asyncapi.py, GET /api/asyncapi.json), with the WebSocket's."""

from sessions.consumers import EVENTS

ASYNCAPI_URL = "/api/asyncapi.json"


def add_run_events_path(result, generator, request, public):
    result["paths"]["/api/runs/{id}/events/"] = {
        "get": {
            "operationId": "runs_events",
            "summary": "Stream a run's events (Server-Sent Events)",
            "description": (
                "Tails a live run and replays a finished one. Each event has `id:` = its seq, `event:` = its name "
                f"({', '.join(EVENTS)}) and `data:` = a JSON payload with `seq`. Resume with the Last-Event-ID "
                "header or ?after=<seq>. The stream ends after the run's terminal event. Each event's payload "
                f"schema is in the AsyncAPI document at {ASYNCAPI_URL} (channel `runEvents`)."
            ),
            "tags": ["runs"],
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0}},
            ],
            "security": [{"ApiKey": []}],
            "responses": {
                "200": {"description": "An event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "400": {"description": "Bad Last-Event-ID"},
                "401": {"description": "Missing or invalid API key"},
                "403": {"description": "The key lacks the read scope, or the tenant is suspended"},
                "404": {"description": "No such run"},
                "429": {"description": "Rate limited; see Retry-After"},
            },
        }
    }
    result["externalDocs"] = {
        "description": "The WebSocket protocol (/ws/) and the run events: AsyncAPI 3.0", "url": ASYNCAPI_URL,
    }
    return result
