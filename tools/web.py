"""A web fetcher that cannot be pointed at the inside of the network (SSRF), and HTML to Markdown.

Where a request may go is decided by the gateway's one address policy
(beamclaw_project/infra/address_policy.py): every hop, the URL and each redirect, is checked before any
connection and the connection is pinned to the checked address. This module adds what is particular to
fetching for a model: no credentials in URLs, the operator's named-host allowlist
BEAMCLAW_WEB_FETCH_ALLOW_HOSTS (`name` or `name:port`, matched against the URL's host as written, never
against an IP it resolves to), and limits on redirects, time and the size of the decoded body.

The body is decoded here, not by httpx, whatever Content-Encoding the server sends despite our
`Accept-Encoding: identity`: httpx expands a whole network chunk at once, and a gzip bomb then reaches
memory before the size cap is looked at (see beamclaw_project/infra/http_body.py).
"""

import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx
from django.conf import settings

from beamclaw_project.infra import address_policy
from beamclaw_project.infra.http_body import BodyDecodeError, decoded_chunks

USER_AGENT = "BeamClaw-web_fetch/1.0 (+https://github.com/beamclaw)"
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml", "application/javascript",
               "application/ld+json", "application/rss+xml", "application/atom+xml")


class FetchError(Exception):
    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


def _refusal_error(url: str, exc: address_policy.OutboundError) -> FetchError:
    if isinstance(exc, address_policy.TargetRefused) and exc.address:
        return FetchError(
            f"refused to fetch {url}: {exc.message}, or named internal hosts with BEAMCLAW_WEB_FETCH_ALLOW_HOSTS.",
            blocked_address=exc.address,
        )
    return FetchError(exc.message)


def _check_shape(url: str) -> None:
    """The checks of a hop that need no network; the address policy runs when the request is sent."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from None
    if parsed.userinfo:
        raise FetchError("URLs with credentials (user:password@) are not fetched")


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


def fetch(url: str) -> FetchResult:
    conf = settings.BEAMCLAW_TOOLS
    total_timeout = conf["WEB_FETCH_TIMEOUT_SECONDS"]
    max_bytes = conf["WEB_FETCH_MAX_BYTES"]
    deadline = time.monotonic() + total_timeout
    redirects: list[str] = []
    current = url
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
        "Accept-Encoding": "identity",
    }
    # The client's transport checks and pins every request it sends, so each hop below is checked again.
    with address_policy.client(
        allow_hosts=conf["WEB_FETCH_ALLOW_HOSTS"], resolve_timeout=min(5.0, total_timeout), verify=True,
    ) as client:
        while True:
            _check_shape(current)
            remaining = max(0.1, deadline - time.monotonic())
            timeout = httpx.Timeout(min(10.0, remaining), connect=min(10.0, remaining))
            try:
                with client.stream("GET", current, headers=headers, timeout=timeout) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(f"{current} answered {response.status_code} without a Location header")
                        if len(redirects) >= conf["WEB_FETCH_MAX_REDIRECTS"]:
                            raise FetchError(f"too many redirects (more than {conf['WEB_FETCH_MAX_REDIRECTS']})", redirects=redirects)
                        current = urljoin(str(response.url), location)
                        redirects.append(current)
                        continue
                    body, truncated = _read_capped(response, max_bytes=max_bytes, deadline=deadline)
                    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    return FetchResult(
                        url=url, final_url=str(response.url), status=response.status_code,
                        content_type=content_type or "text/plain", body=body,
                        encoding=response.charset_encoding, truncated=truncated, redirects=redirects,
                    )
            except address_policy.OutboundError as exc:
                raise _refusal_error(current, exc) from None
            except BodyDecodeError as exc:
                raise FetchError(f"could not read the body of {current}: {exc}") from None
            except httpx.TimeoutException:
                raise FetchError(f"{current} did not answer within the time limit") from None
            except httpx.HTTPError as exc:
                raise FetchError(f"could not fetch {current}: {exc}") from None


def _read_capped(response: httpx.Response, *, max_bytes: int, deadline: float) -> tuple[bytes, bool]:
    """The decoded body up to max_bytes, and whether it was cut (by the cap or the deadline)."""
    body = bytearray()
    for chunk in decoded_chunks(response.iter_raw(), response.headers.get("content-encoding")):
        body += chunk
        if len(body) > max_bytes:
            del body[max_bytes:]
            return bytes(body), True
        if time.monotonic() > deadline:
            return bytes(body), True
    return bytes(body), False


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
