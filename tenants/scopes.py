"""What each API key scope allows, on every edge (REST, /v1, WebSocket). The one table of it.

A key carries a set of scopes; a full key has all three. They are independent, not a ladder, so a key can be
exactly what its holder needs:

- `read`: look at everything (every GET on the REST API, the run event stream, the listing WebSocket methods).
- `chat`: talk to agents: start sessions, send messages, reset a conversation (the old one is archived, not
  lost), abort runs, invoke tools (under the agent's tool policy and approvals), the whole OpenAI-compatible
  API (clients list models before they chat, so /v1/models belongs to chatting).
- `admin`: change what the tenant is: agents, API keys, session settings and deletion, cron jobs, and
  deciding approvals (an approval lets a risky tool call run, which a chat front end must not decide).

Anything not listed below as `read` or `chat` needs `admin`, so an endpoint added later is closed to
narrower keys until someone decides otherwise (fails closed).
"""

from django.db import models

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Scope(models.TextChoices):
    READ = "read", "read: view everything"
    CHAT = "chat", "chat: sessions, messages, aborts, tool invocations, /v1"
    ADMIN = "admin", "admin: agents, keys, cron, approvals, session settings"


ALL_SCOPES: tuple[str, ...] = tuple(Scope.values)

# REST writes a chat front end needs, by URL name (router basename + action) and method.
CHAT_ROUTES = {
    ("session-list", "POST"),       # create a session
    ("session-reset", "POST"),      # a fresh conversation; the old transcript is archived
    ("session-messages", "POST"),   # send a message
    ("session-compact", "POST"),    # summarize older turns now
    ("run-abort", "POST"),
    ("tool-invoke", "POST"),
}

WEBSOCKET_METHOD_SCOPES = {
    "agents.list": Scope.READ,
    "sessions.list": Scope.READ,
    "sessions.history": Scope.READ,
    "sessions.subscribe": Scope.READ,
    "approvals.list": Scope.READ,
    "sessions.create": Scope.CHAT,
    "sessions.reset": Scope.CHAT,
    "chat.send": Scope.CHAT,
    "chat.abort": Scope.CHAT,
    "sessions.compact": Scope.CHAT,
    "approvals.resolve": Scope.ADMIN,
}


def rest_scope(*, method: str, url_name: str | None) -> str:
    """The scope a REST request needs."""
    if method in SAFE_METHODS:
        return Scope.READ
    if (url_name, method) in CHAT_ROUTES:
        return Scope.CHAT
    return Scope.ADMIN


def websocket_scope(method: str) -> str | None:
    """The scope a WebSocket method needs; None for `connect`, `health` and unknown methods (which the
    consumer answers itself)."""
    return WEBSOCKET_METHOD_SCOPES.get(method)


def missing_scope_message(scope: str, what: str) -> str:
    return f"This API key lacks the '{scope}' scope, which {what} needs."
