"""OpenAPI for the one REST endpoint that is not a DRF view: the run event stream (SSE)."""


def add_run_events_path(result, generator, request, public):
    result["paths"]["/api/runs/{id}/events/"] = {
        "get": {
            "operationId": "runs_events",
            "summary": "Stream a run's events (Server-Sent Events)",
            "description": (
                "Tails a live run and replays a finished one. Each event has `id:` = its seq, `event:` = its name "
                "(run.started, text.delta, tool.call, tool.result, approval.requested, approval.resolved, "
                "run.completed, run.failed, run.aborted) and `data:` = a JSON payload. Resume with the "
                "Last-Event-ID header or ?after=<seq>. The stream ends after the run's terminal event."
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
                "404": {"description": "No such run"},
            },
        }
    }
    return result
