"""Domain errors: what a service refuses, and why, in words every edge can show as they are.

Services raise these; each edge turns them into its own wire shape in exactly one place:
REST in `beamclaw_project/api_errors.py`, the OpenAI-compatible API in `sessions/openai_api.py`, the
WebSocket in `sessions/consumers.py`. So an edge does not catch each service's exceptions one by one, and a
refusal reads the same whichever way the request came in.

- The class says what kind of refusal it is; `status` is the HTTP status an HTTP edge answers with.
- `message` is for people: complete, and it names the limit or the input at fault.
- `code` is the stable machine-readable code (a class default, which a subclass or a raise may narrow).
- `field` names the input at fault, where there is one (REST puts the message under it, OpenAI in `param`).

Bottom layer: nothing here imports an app.
"""


class DomainError(Exception):
    status = 400
    code = "invalid"
    field: str | None = None

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if field is not None:
            self.field = field


class InvalidInput(DomainError):
    """The request is malformed or asks for something impossible; sending it again cannot help."""

    status = 400
    code = "invalid"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Forbidden(DomainError):
    """The caller is known, but may not do this."""

    status = 403
    code = "permission_denied"


class Conflict(DomainError):
    """The request is valid, but the current state of what it addresses does not allow it."""

    status = 409
    code = "conflict"


class LimitExceeded(DomainError):
    """A rate, quota or budget is used up; `retry_after` says in how many seconds it is worth trying again."""

    status = 429

    def __init__(self, message: str, *, code: str, retry_after: int):
        super().__init__(message, code=code)
        self.retry_after = retry_after

