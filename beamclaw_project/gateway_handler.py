"""The ASGI handler in front of Django: the API's async views without Django's per-request machinery.

Django's ASGIHandler sends `request_started` and `request_finished` around every request, each through a
thread hop onto the one shared "thread-sensitive" thread (their receivers close the database connections
and caches of the thread that served the request), then runs the middleware chain. The OpenAI-compatible
API, /health and the run event stream are async views authenticated by API key that touch the database only
through `db_call`, which borrows a pooled connection on an executor thread and gives it back: nothing is
open on the event loop's thread for those receivers to close. So these requests skip the signals and the
browser middleware (see middleware.ApiFastPathMiddleware), and pass only the checks every body needs (the
size limit and the NUL refusal) and the outage answer (a 503 when Redis or PostgreSQL is down). Every
other request is Django's, unchanged.

Measured on the OpenAI streaming path (docs/performance.md): the two hops were ~7% of Daphne's CPU per run.
"""

import asyncio
from contextlib import suppress

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix

from beamclaw_project.middleware import RejectNulMiddleware, RequestBodyLimitMiddleware, api_view_call, api_view_of


class GatewayHandler(ASGIHandler):
    def __init__(self):
        super().__init__()
        # The same checks, in the same order and with the same exception handling, as in settings.MIDDLEWARE.
        self._api_chain = convert_exception_to_response(
            RequestBodyLimitMiddleware(convert_exception_to_response(
                RejectNulMiddleware(convert_exception_to_response(api_view_call))
            ))
        )

    async def handle(self, scope, receive, send):
        match = api_view_of(scope["path"])
        if match is None:
            return await super().handle(scope, receive, send)
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                await self.send_response(error_response, send)
                return
            request.resolver_match = match
            await self._serve_until_disconnect(request, receive, send)
        finally:
            body_file.close()

    async def _serve_until_disconnect(self, request, receive, send) -> None:
        """Like Django's handler: the view is cancelled when the client goes away (a streaming reply stops
        following its run), and a disconnect is not an error."""

        async def respond():
            response = await self._api_chain(request)
            if not response.streaming and not response.has_header("Content-Length"):
                # What CommonMiddleware does for Django's other responses: without it Twisted sends the body
                # chunked, three writes (headers, the chunk, the last chunk) where two will do.
                response.headers["Content-Length"] = str(len(response.content))
            with suppress(asyncio.CancelledError):
                await self.send_response(response, send)

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        responder = asyncio.create_task(respond())
        await asyncio.wait((listener, responder), return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, responder):
            if not task.done():
                task.cancel()
            with suppress(asyncio.CancelledError, RequestAborted):
                await task
