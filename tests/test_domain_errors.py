"""Domain errors (beamclaw_project/errors.py) and the one mapping of each edge: REST's exception handler, the
OpenAI error shape and the WebSocket error frame all answer a refusal with its status, code and message."""

import json

import pytest

from beamclaw_project.api_errors import api_exception_handler
from beamclaw_project.errors import Conflict, Forbidden, InvalidInput, LimitExceeded, NotFound
from sessions.consumers import domain_error_frame
from sessions.idempotency import IdempotencyConflict
from sessions.openai_api import domain_error_response
from sessions.runs import SessionClosed

CASES = [
    # error, HTTP status, REST code, OpenAI code, WebSocket code
    (InvalidInput("Must be positive.", field="count"), 400, "invalid", "invalid_request", "invalid_params"),
    (NotFound("No such thing."), 404, "not_found", "not_found", "not_found"),
    (Forbidden("Not for you."), 403, "permission_denied", "permission_denied", "permission_denied"),
    (Conflict("Busy."), 409, "conflict", "conflict", "conflict"),
    (LimitExceeded("Slow down.", code="rate_limited", retry_after=7), 429, "rate_limited", "rate_limited", "rate_limited"),
    (IdempotencyConflict("Key reused."), 409, "conflict", "idempotency_key_reused", "conflict"),
    (SessionClosed("Session closed."), 409, "conflict", "session_closed", "conflict"),
]


@pytest.mark.parametrize("error, status, rest_code, openai_code, ws_code", CASES)
def test_each_edge_answers_a_domain_error_with_its_status_code_and_message(error, status, rest_code, openai_code, ws_code):
    rest = api_exception_handler(error, {"view": None})
    assert (rest.status_code, rest.data["code"]) == (status, rest_code)
    assert error.message in rest.data["detail"]

    openai = domain_error_response(error)
    body = json.loads(openai.content)["error"]
    assert (openai.status_code, body["code"], body["message"]) == (status, openai_code, error.message)
    assert body["param"] == error.field

    frame_error = domain_error_frame(error)
    assert (frame_error.code, frame_error.message) == (ws_code, error.message)


def test_input_errors_name_their_field_and_limits_say_when_to_retry():
    rest = api_exception_handler(InvalidInput("Must be positive.", field="count"), {"view": None})
    assert rest.data["count"] == ["Must be positive."]
    limited = LimitExceeded("Slow down.", code="token_budget_exceeded", retry_after=7)
    assert api_exception_handler(limited, {"view": None}).data["retry_after"] == 7
    openai = domain_error_response(limited)
    assert openai["Retry-After"] == "7" and json.loads(openai.content)["error"]["type"] == "insufficient_quota"
