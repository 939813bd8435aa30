"""The one address policy for every request the gateway makes on a tenant's or a model's behalf.

web_fetch, cron webhook deliveries, and later channel callbacks and fetched images all go through here, so
"may this request leave?" has one answer. Invariants:

- Only http and https. The host, as an IP literal in any spelling the resolver accepts (`2130706433`,
  `0x7f.1`, `[::ffff:127.0.0.1]`) or as a name, must resolve only to public unicast addresses. One
  non-public answer among several refuses the request: whoever controls the DNS could otherwise mix them.
- Non-public means loopback, RFC 1918, shared/CGNAT (100.64/10, Alibaba's metadata 100.100.100.200),
  link-local (169.254.169.254 and other metadata), unique-local (fc00::/7, AWS's fd00:ec2::254),
  multicast, unspecified, reserved and documentation ranges, and IPv6 forms embedding such an IPv4
  address (mapped, NAT64, 6to4 such as 2002:a9fe:a9fe::1, Teredo).
- The only exceptions are the operator's: BEAMCLAW_OUTBOUND_ALLOW_CIDRS (ranges, for every caller) and
  host names a caller admits by name (web_fetch's BEAMCLAW_WEB_FETCH_ALLOW_HOSTS). Tenants and models
  cannot widen either.
- The connection goes to the address that was checked (`PinnedTransport`): the URL is rewritten to the
  IP, while the Host header and TLS SNI keep the name and the certificate is verified against the name.
  A second DNS answer therefore cannot swap in a private address (DNS rebinding). Every request through
  the transport is checked, so each redirect hop is checked before it is followed. Proxies from the
  environment are never used: a proxy would make the connection on our behalf to an unchecked address.
"""

import concurrent.futures
import functools
import ipaddress
import socket
import threading
from dataclasses import dataclass

import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
# getaddrinfo has no timeout of its own; a thread lets a caller stop waiting for a hung resolver.
_resolver_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="outbound-dns")

ALLOW_SETTING = "BEAMCLAW_OUTBOUND_ALLOW_CIDRS"


class OutboundError(Exception):
    """A request that may not or could not be made. `transient` says whether trying later can help."""

    transient = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TargetRefused(OutboundError):
    """The URL is unusable, or its host is (or resolves to) an address the policy refuses."""

    def __init__(self, message: str, *, host: str = "", address: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.host = host
        self.address = address
        self.reason = reason


class ResolveFailed(OutboundError):
    """The host name did not resolve (DNS errors are often temporary)."""

    transient = True


def non_public_reason(ip: IPAddress) -> str | None:
    """Why an address is not public, or None if it is a public unicast address."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is None and ip.sixtofour is not None:
            embedded = ip.sixtofour
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is not None:
            reason = non_public_reason(embedded)
            if reason:
                return f"{reason} (embedded in {ip})"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (this includes cloud metadata services)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.version == 6 and ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved or otherwise non-public"
    return None


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # settings.py validated the entries at startup; strict=False only tolerates values set in code.
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def operator_allows(ip: IPAddress) -> bool:
    """Whether the operator admitted this address's range (BEAMCLAW_OUTBOUND_ALLOW_CIDRS)."""
    networks = _networks(tuple(settings.BEAMCLAW_OUTBOUND["ALLOW_CIDRS"]))
    candidates = [ip] + ([ip.ipv4_mapped] if ip.version == 6 and ip.ipv4_mapped else [])
    return any(candidate in network for candidate in candidates for network in networks if candidate.version == network.version)


def refusal(ip: IPAddress) -> str | None:
    """Why the policy refuses this address (its non-public reason), or None if it may be reached."""
    reason = non_public_reason(ip)
    if reason is None or operator_allows(ip):
        return None
    return reason


@dataclass(frozen=True)
class Target:
    """A checked URL and the address its connection must go to."""

    url: httpx.URL
    host: str
    port: int
    address: str

    @property
    def pinned_url(self) -> httpx.URL:
        return self.url.copy_with(host=self.address)

    @property
    def extensions(self) -> dict:
        # The TLS handshake (SNI and certificate check) is about the name, not the pinned IP.
        return {"sni_hostname": self.host} if self.url.scheme == "https" else {}


def parse_url(url: str | httpx.URL) -> tuple[httpx.URL, str, int]:
    """(URL, lower-case host without brackets, port) of an http(s) URL, or TargetRefused."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise TargetRefused(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused(f"only http and https URLs can be reached, not {parsed.scheme or 'a URL without a scheme'!r}")
    if not parsed.raw_host:
        raise TargetRefused(f"the URL {str(url)!r} has no host")
    host = parsed.raw_host.decode("ascii").lower()
    return parsed, host, parsed.port or (443 if parsed.scheme == "https" else 80)


def _numeric_address(host: str) -> str | None:
    """The address an IP literal denotes, in any spelling the resolver accepts; None for a name."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    try:
        # The legacy IPv4 spellings (`2130706433`, `0x7f.1`, `127.1`) the C resolver turns into addresses.
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    future = _resolver_pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise ResolveFailed(f"resolving {host} timed out") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolveFailed(f"could not resolve {host}: {exc}") from None
    addresses = []
    for _, _, _, _, sockaddr in infos:
        # getaddrinfo returns IPv6 link-local addresses with a zone ("fe80::1%eth0").
        address = sockaddr[0].split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ResolveFailed(f"{host} did not resolve to any address")
    return addresses


def _host_admitted(host: str, port: int, allow_hosts) -> bool:
    host = host.rstrip(".")
    return any(entry.rstrip(".").lower() in (host, f"{host}:{port}") for entry in allow_hosts)


def _refuse_if_needed(host: str, addresses: list[str]) -> None:
    for address in addresses:
        reason = refusal(ipaddress.ip_address(address))
        if reason:
            shown = host if host == address else f"{host} resolves to {address}, which"
            raise TargetRefused(
                f"{shown} is a {reason} address. Only public addresses are reached (an operator can allow "
                f"ranges with {ALLOW_SETTING})",
                host=host, address=address, reason=reason,
            )


def check_literal(url: str) -> None:
    """The checks that need no DNS, for validating a stored target when it is saved: the URL's shape,
    and its host if that is an IP literal. The full check_url still runs before every request."""
    _, host, _ = parse_url(url)
    address = _numeric_address(host)
    if address is not None:
        _refuse_if_needed(host, [address])


def check_url(url: str | httpx.URL, *, allow_hosts=(), resolve_timeout: float = 5.0) -> Target:
    """Check one request's URL and pick the address to connect to, before any connection is made.

    `allow_hosts` admits names (`name` or `name:port`, as written in the URL, never an address the name
    resolves to) that a caller's own operator setting lists. Raises TargetRefused or ResolveFailed."""
    parsed, host, port = parse_url(url)
    address = _numeric_address(host)
    addresses = [address] if address is not None else _resolve(host, port, resolve_timeout)
    if not _host_admitted(host, port, allow_hosts):
        _refuse_if_needed(host, addresses)
    return Target(url=parsed, host=host, port=port, address=addresses[0])


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport that checks every request (each redirect hop included) with check_url and
    connects to the checked address. Connection pools are kept per (scheme, name, port, address): a
    connection opened and verified for one name is never reused for another name on the same IP."""

    def __init__(self, *, allow_hosts=(), resolve_timeout: float = 5.0, verify=True):
        self._allow_hosts = tuple(allow_hosts)
        self._resolve_timeout = resolve_timeout
        self._verify = verify
        self._pools: dict[tuple, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = check_url(request.url, allow_hosts=self._allow_hosts, resolve_timeout=self._resolve_timeout)
        key = (target.url.scheme, target.host, target.port, target.address)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = httpx.HTTPTransport(verify=self._verify, trust_env=False)
        # The request keeps its Host header (built from the name); only the connection goes to the IP.
        pinned = httpx.Request(
            request.method, target.pinned_url, headers=request.headers, stream=request.stream,
            extensions={**request.extensions, **target.extensions},
        )
        return pool.handle_request(pinned)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def client(*, allow_hosts=(), resolve_timeout: float = 5.0, verify=True, **kwargs) -> httpx.Client:
    """An httpx.Client whose every request goes through the policy (see PinnedTransport). Redirects are
    off unless the caller turns them on; each followed hop is checked like the first."""
    kwargs.setdefault("follow_redirects", False)
    transport = PinnedTransport(allow_hosts=allow_hosts, resolve_timeout=resolve_timeout, verify=verify)
    return httpx.Client(transport=transport, trust_env=False, **kwargs)
