"""A web fetcher that cannot be pointed at the inside of the network (SSRF), and HTML to Markdown.

Every hop (the URL and each redirect) is checked before any connection: the scheme must be http or
https, and the host, whether an IP literal (in any spelling the resolver accepts: `2130706433`,
`0x7f.1`, `[::ffff:127.0.0.1]`) or a name, must resolve only to public addresses. One non-public answer
among several refuses the hop: an attacker controlling DNS could otherwise mix them. The connection then
goes to the address that was checked (the URL is rewritten to the IP; Host header and TLS SNI keep the
name, and the certificate is verified against the name), so a second DNS answer cannot swap in a
private address (DNS rebinding). Proxies from the environment are ignored for the same reason.

Operators may admit named internal hosts with BEAMCLAW_WEB_FETCH_ALLOW_HOSTS (`name` or `name:port`,
matched against the URL's host as written, never against an IP it resolves to).
"""

import concurrent.futures
import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx
from django.conf import settings

USER_AGENT = "BeamClaw-web_fetch/1.0 (+https://github.com/beamclaw)"
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml", "application/javascript",
               "application/ld+json", "application/rss+xml", "application/atom+xml")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_resolver_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="web-fetch-dns")


class FetchError(Exception):
    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


def non_public_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched from, or None if it is a public unicast address."""
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
    if ip.version == 6 and ip in ipaddress.ip_network("fc00::/7"):
        return "unique-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved or otherwise non-public"
    return None


def _allowlisted(host: str, port: int) -> bool:
    host = host.rstrip(".").lower()
    allowed = settings.BEAMCLAW_TOOLS["WEB_FETCH_ALLOW_HOSTS"]
    return any(entry.rstrip(".") in (host, f"{host}:{port}") for entry in allowed)


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    future = _resolver_pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise FetchError(f"resolving {host} timed out") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"could not resolve {host}: {exc}") from None
    addresses = []
    for _, _, _, _, sockaddr in infos:
        # getaddrinfo returns IPv6 link-local addresses with a zone ("fe80::1%eth0").
        address = sockaddr[0].split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass
class Hop:
    url: httpx.URL
    host: str
    port: int
    address: str


def check_url(url: str, *, resolve_timeout: float = 5.0) -> Hop:
    """Validate one hop and pick the address to connect to. Raises FetchError before any connection."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"only http and https URLs can be fetched, not {parsed.scheme or 'a URL without a scheme'!r}")
    if not parsed.raw_host:
        raise FetchError(f"the URL {url!r} has no host")
    if parsed.userinfo:
        raise FetchError("URLs with credentials (user:password@) are not fetched")
    host = parsed.raw_host.decode("ascii").lower()
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = _resolve(host, port, resolve_timeout)
    if not addresses:
        raise FetchError(f"{host} did not resolve to any address")
    if not _allowlisted(host, port):
        for address in addresses:
            reason = non_public_reason(ipaddress.ip_address(address))
            if reason:
                shown = host if host == address else f"{host} resolves to {address}, which"
                raise FetchError(
                    f"refused to fetch {url}: {shown} is a {reason} address. Only public addresses can be "
                    "fetched (operators can allow named internal hosts with BEAMCLAW_WEB_FETCH_ALLOW_HOSTS).",
                    blocked_address=address,
                )
    return Hop(url=parsed, host=host, port=port, address=addresses[0])


@dataclass
class FetchResult:
    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    encoding: str | None
    truncated: bool
    redirects: list[str] = field(default_factory=list)


def _host_header(hop: Hop) -> str:
    host = f"[{hop.host}]" if ":" in hop.host else hop.host
    default = 443 if hop.url.scheme == "https" else 80
    return host if hop.port == default else f"{host}:{hop.port}"


def fetch(url: str) -> FetchResult:
    conf = settings.BEAMCLAW_TOOLS
    total_timeout = conf["WEB_FETCH_TIMEOUT_SECONDS"]
    max_bytes = conf["WEB_FETCH_MAX_BYTES"]
    deadline = time.monotonic() + total_timeout
    redirects: list[str] = []
    current = url
    while True:
        hop = check_url(current, resolve_timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        remaining = max(0.1, deadline - time.monotonic())
        timeout = httpx.Timeout(min(10.0, remaining), connect=min(10.0, remaining))
        pinned = hop.url.copy_with(host=hop.address)
        extensions = {"sni_hostname": hop.host} if hop.url.scheme == "https" else {}
        headers = {
            "Host": _host_header(hop),
            "User-Agent": USER_AGENT,
            "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
            # Compressed bodies could expand far past the size cap in one chunk.
            "Accept-Encoding": "identity",
        }
        # A fresh client per hop: a pooled connection to the same IP must never be reused for another name.
        with httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout, verify=True) as client:
            try:
                with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(f"{current} answered {response.status_code} without a Location header")
                        if len(redirects) >= conf["WEB_FETCH_MAX_REDIRECTS"]:
                            raise FetchError(f"too many redirects (more than {conf['WEB_FETCH_MAX_REDIRECTS']})", redirects=redirects)
                        current = urljoin(str(hop.url), location)
                        redirects.append(current)
                        continue
                    body = bytearray()
                    truncated = False
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            del body[max_bytes:]
                            truncated = True
                            break
                        if time.monotonic() > deadline:
                            truncated = True
                            break
                    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    return FetchResult(
                        url=url, final_url=str(hop.url), status=response.status_code,
                        content_type=content_type or "text/plain", body=bytes(body),
                        encoding=response.charset_encoding, truncated=truncated, redirects=redirects,
                    )
            except httpx.TimeoutException:
                raise FetchError(f"{current} did not answer within the time limit") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"could not fetch {current}: {exc}") from None


def is_text_type(content_type: str) -> bool:
    return content_type.startswith(_TEXT_TYPES) or content_type.endswith(("+json", "+xml"))


def is_html(content_type: str) -> bool:
    return content_type in ("text/html", "application/xhtml+xml")


class _MarkdownParser(HTMLParser):
    """Readable Markdown from HTML: headings, paragraphs, lists, links, emphasis, code and pre blocks;
    scripts, styles and other non-content elements are dropped."""

    SKIP = {"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas", "head", "select", "button"}
    BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "table", "form",
             "figure", "blockquote", "ul", "ol", "dl", "address", "details", "summary", "tr", "hr"}
    VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}

    def __init__(self, base_url: str):
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.title_parts: list[str] | None = None
        self.title = ""
        self.links: list[tuple[int, str | None]] = []
        self.lists: list[str] = []

    def _emit(self, text: str) -> None:
        self.parts.append(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "title" and not self.title:
            self.title_parts = []
            return
        if tag in self.SKIP:
            if tag not in self.VOID:
                self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._emit("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in ("ul", "ol"):
            self.lists.append(tag)
            self._emit("\n")
        elif tag == "li":
            indent = "  " * max(0, len(self.lists) - 1)
            self._emit(f"\n{indent}" + ("1. " if self.lists and self.lists[-1] == "ol" else "- "))
        elif tag == "br":
            self._emit("\n")
        elif tag == "pre":
            self.pre_depth += 1
            self._emit("\n\n```\n")
        elif tag == "code" and not self.pre_depth:
            self._emit("`")
        elif tag in ("strong", "b"):
            self._emit("**")
        elif tag in ("em", "i"):
            self._emit("*")
        elif tag == "a":
            href = attributes.get("href")
            self.links.append((len(self.parts), href))
        elif tag == "img" and attributes.get("alt"):
            self._emit(f"[image: {attributes['alt']}]")
        elif tag in ("td", "th"):
            self._emit(" | ")
        elif tag in self.BLOCK:
            self._emit("\n\n")

    def handle_endtag(self, tag):
        if tag == "title" and self.title_parts is not None:
            self.title = " ".join("".join(self.title_parts).split())
            self.title_parts = None
            return
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._emit("\n\n")
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._emit("\n")
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            self._emit("\n```\n\n")
        elif tag == "code" and not self.pre_depth:
            self._emit("`")
        elif tag in ("strong", "b"):
            self._emit("**")
        elif tag in ("em", "i"):
            self._emit("*")
        elif tag == "a" and self.links:
            start, href = self.links.pop()
            text = "".join(self.parts[start:]).strip()
            if href and text and not href.lower().startswith(("javascript:", "data:", "#")):
                self.parts[start:] = [f"[{text}]({urljoin(self.base_url, href)})"]
        elif tag in self.BLOCK:
            self._emit("\n\n")

    def handle_data(self, data):
        if self.title_parts is not None:
            self.title_parts.append(data)
            return
        if self.skip_depth:
            return
        if self.pre_depth:
            self._emit(data)
        else:
            self._emit(re.sub(r"\s+", " ", data))

    def markdown(self) -> str:
        text = "".join(self.parts)
        lines = [line.rstrip() for line in text.split("\n")]
        text = "\n".join(line if line.strip() else "" for line in lines)
        return re.sub(r"\n{3,}", "\n\n", text).strip()


def html_to_markdown(html: str, *, base_url: str) -> tuple[str, str]:
    """(title, Markdown text) of an HTML document."""
    parser = _MarkdownParser(base_url)
    parser.feed(html)
    parser.close()
    return parser.title, parser.markdown()
