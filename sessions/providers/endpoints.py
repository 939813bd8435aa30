"""Where a provider call goes: the deployment's endpoint (trusted) or an agent's own `base_url` (not).

The deployment's endpoints (ANTHROPIC_BASE_URL, OPENAI_BASE_URL) are the operator's and may be anything,
a local Ollama included. An agent's `base_url` is set by a tenant, so it is an outbound target like a
webhook URL: it goes through the one address policy (beamclaw_project/infra/address_policy.py), checked
when it is saved (`base_url_clean`, a 400 naming `base_url`) and again on every request, through a client
whose connections go to the checked address (DNS may have changed since it was saved). Loopback, private
and metadata addresses are refused unless the operator allows their range (BEAMCLAW_OUTBOUND_ALLOW_CIDRS).

Building an SDK client costs about 22 ms of CPU (measured for both SDKs; most of it is the TLS context),
so clients are kept per (base_url, key), which also keeps their connections open for the next call.
"""

import logging

import httpcore2
import httpx
from django.conf import settings
from rest_framework.exceptions import ValidationError

from beamclaw_project.infra import address_policy
from beamclaw_project.infra.draining import cut_on_drain
from sessions.providers.base import ProviderError
from sessions.providers.http1 import Http1Transport

logger = logging.getLogger(__name__)

CLIENT_CACHE_SIZE = 256


# A server that does not even accept the connection is given up on sooner than one that is thinking.
CONNECT_TIMEOUT_SECONDS = 10.0


def timeout_seconds() -> float:
    """A step is bounded by the provider timeout (Celery cannot enforce limits in a thread pool)."""
    return settings.BEAMCLAW["PROVIDER_TIMEOUT_SECONDS"]


def checked_http_client() -> httpx.Client:
    """An httpx client for an agent's own base_url: every request is checked by the address policy."""
    return address_policy.client(timeout=httpx.Timeout(timeout_seconds(), connect=CONNECT_TIMEOUT_SECONDS))


def endpoint_refused(exc: address_policy.OutboundError, base_url: str) -> ProviderError:
    """The address policy stopped a request to an agent's base_url (or its host did not resolve)."""
    if isinstance(exc, address_policy.TargetRefused):
        return ProviderError(
            f"The agent's base_url {base_url!r} may not be reached: {exc.message}. Point base_url at a public "
            "server, or ask the operator to allow its range.",
            kind="bad_request",
        )
    return ProviderError(
        f"The agent's base_url {base_url!r} could not be reached: {exc.message}. Check the host name.",
        kind="connection",
        retryable=True,
    )


def base_url_clean(value) -> str:
    """`Agent.base_url` as the API takes it: empty (the deployment's endpoint) or an http(s) URL whose host
    the address policy allows. A host name is resolved now as well, so `localhost` or a name pointing at a
    metadata address is refused at once; one that does not resolve yet is accepted (it is checked again on
    every call)."""
    if value in (None, ""):
        return ""
    if not isinstance(value, str):
        raise ValidationError("Must be a URL string, or empty for the deployment's endpoint.")
    value = value.strip()
    try:
        parsed, _, _ = address_policy.parse_url(value)
        if parsed.userinfo:
            raise address_policy.TargetRefused("put the key in api_key (write-only), not in the URL")
        address_policy.check_url(value, resolve_timeout=3.0)
    except address_policy.ResolveFailed:
        pass
    except address_policy.TargetRefused as exc:
        raise ValidationError(f"base_url is refused: {exc.message}.") from None
    return value


# --- reads a drain (or an abort) can cut -----------------------------------------------------------


def reads_made_cuttable(http_client) -> bool:
    """Make every read of `http_client`'s connections (an httpx2.Client, the anthropic SDK's) one that a
    worker's drain, or the reading thread's `cut_also_by` (a run's abort), can cut short
    (beamclaw_project/infra/draining.py); False when the client is not built as this pinned httpx2 builds
    it. Wrapping the read itself, not the response, covers the wait for a reply's headers, which a reply asked
    for whole sends only once the model has written all of it. httpx2 has no public way to give its
    transports a network backend, so the wrapper goes into each transport's connection pool."""
    transports = [http_client._transport, *(t for t in http_client._mounts.values() if t is not None)]
    # (Our Http1Transport's reads are cut by the transport itself.)
    pools = [getattr(transport, "_pool", None) for transport in transports if not isinstance(transport, Http1Transport)]
    if not all(isinstance(getattr(pool, "_network_backend", None), httpcore2.NetworkBackend) for pool in pools):
        logger.warning("the model client's connections cannot be cut on drain or abort (httpx2's layout "
                       "changed); replies are streamed, never asked for whole")
        return False
    for pool in pools:
        if not isinstance(pool._network_backend, _CuttableBackend):
            pool._network_backend = _CuttableBackend(pool._network_backend)
    return True


class _CuttableBackend(httpcore2.NetworkBackend):
    def __init__(self, backend: httpcore2.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, *args, **kwargs) -> httpcore2.NetworkStream:
        return _CuttableStream(self._backend.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args, **kwargs) -> httpcore2.NetworkStream:
        return _CuttableStream(self._backend.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _CuttableStream(httpcore2.NetworkStream):
    def __init__(self, stream: httpcore2.NetworkStream):
        self._stream = stream
        self._socket = stream.get_extra_info("socket")

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with cut_on_drain(self._socket):
            return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args, **kwargs) -> httpcore2.NetworkStream:
        return _CuttableStream(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)
