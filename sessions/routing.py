"""WebSocket routes: the gateway protocol at `/ws/` (or `/ws`); every other path is refused at the handshake
with a 404 and a JSON body, not left to the router (which raises, and Daphne turns that into a 500)."""

import json

from django.urls import re_path

from sessions.consumers import GatewayConsumer

NOT_FOUND_MESSAGE = "No WebSocket endpoint at {path}: the gateway's WebSocket is /ws/."


async def unknown_path(scope, receive, send):
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        # A server without denial responses can only refuse (Daphne's own answer to that is a 403).
        await send({"type": "websocket.close"})
        return
    message = NOT_FOUND_MESSAGE.format(path=scope["path"])
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "not_found"}
    body = json.dumps({"detail": message, "error": error}).encode()
    await send({"type": "websocket.http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "websocket.http.response.body", "body": body})


websocket_urlpatterns = [
    re_path(r"^ws/?$", GatewayConsumer.as_asgi()),
    re_path(r"", unknown_path),
]
