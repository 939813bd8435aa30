"""Images a message links to by URL, fetched by the gateway and stored in the transcript as base64.

Left as URLs, the provider would fetch them itself at every step of every later run: a URL it cannot
reach, or that changed or went away, would fail a run long after the message was accepted, and what the
model saw could change after the fact. Fetched once, when the message arrives, an image is checked exactly
as an inline one is (sessions/content.py), a failure is the client's 400, and every later step reuses it.

Invariants:

- Every request goes through the gateway's one address policy (beamclaw_project/infra/address_policy.py):
  the URL and each redirect hop are checked before any connection, the connection is pinned to the checked
  address, no proxy is used. Loopback, private, link-local (metadata) and other non-public addresses are
  refused unless the operator allows their range (BEAMCLAW_OUTBOUND_ALLOW_CIDRS). http and https are both
  fetched: the policy, not the scheme, is what keeps requests off the inside network, and the bytes are
  checked whichever way they came. URLs with credentials are refused.
- Limits for one image: BEAMCLAW["IMAGE_FETCH_TIMEOUT_SECONDS"] for all of it (redirects and body),
  IMAGE_FETCH_MAX_REDIRECTS hops, IMAGE_MAX_BYTES of body (decoded; reading stops there). The response
  must be a 200 whose Content-Type is an accepted image type, and whose bytes are that type. One request
  may link at most IMAGE_URLS_MAX_PER_REQUEST images; they are fetched in parallel.
- It waits on the network, so it runs on a worker thread (never on the event loop) and outside any
  database transaction, which it checks; it gives the thread's pooled database connection back first, so
  a slow image server holds no connection.
- Any failure raises ContentInvalid naming the part (`messages[0].content[1]: image URL refused: ...`):
  a 400 on every edge, before anything is stored.
"""

import concurrent.futures
import time
from urllib.parse import urljoin

import httpx
from django.conf import settings
from django.db import connection, transaction

from beamclaw_project.infra import address_policy
from beamclaw_project.infra.http_body import BodyDecodeError, decoded_chunks
from sessions.content import (
    IMAGE_MEDIA_TYPES,
    IMAGES_ACCEPTED,
    ContentInvalid,
    UrlImageBlock,
    base64_image_block,
    bytes_text,
    image_bytes_check,
    image_media_type,
)

USER_AGENT = "BeamClaw-image-fetch/1.0"
_HEADERS = {"User-Agent": USER_AGENT, "Accept": ",".join(IMAGE_MEDIA_TYPES), "Accept-Encoding": "identity"}
# Images of one request fetched at once.
_PARALLEL = 4

Turns = list[tuple[str, list[dict]]]


def images_fetch(blocks: list[dict]) -> list[dict]:
    """`blocks` (from content_parse) with each image linked by URL replaced by the fetched image, as a base64
    block. Raises ContentInvalid naming the part whose image was refused or could not be fetched."""
    return _fetch_all([blocks])[0]


def turns_images_fetch(turns: Turns) -> Turns:
    """images_fetch for the (role, blocks) turns of one request, their images fetched together."""
    fetched = _fetch_all([blocks for _, blocks in turns])
    return [(role, blocks) for (role, _), blocks in zip(turns, fetched, strict=True)]


def _is_url_image(block) -> bool:
    return isinstance(block, dict) and block.get("type") == "image" and (block.get("source") or {}).get("type") == "url"


def _where(block: dict) -> str:
    return block.where if isinstance(block, UrlImageBlock) else "content"


def _fetch_all(block_lists: list[list[dict]]) -> list[list[dict]]:
    wanted = [block for blocks in block_lists for block in blocks if _is_url_image(block)]
    if not wanted:
        return block_lists
    most = settings.BEAMCLAW["IMAGE_URLS_MAX_PER_REQUEST"]
    if len(wanted) > most:
        where = _where(wanted[most])
        raise ContentInvalid(
            f"{where}: the request links {len(wanted)} images by URL; at most {most} are fetched for one "
            "request. Send the others inline, as data URLs.",
            field=where,
        )
    assert not transaction.get_connection().in_atomic_block, "images are fetched before any transaction"
    connection.close()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=min(_PARALLEL, len(wanted)), thread_name_prefix="image-fetch")
    try:
        futures = {id(block): executor.submit(_fetch, block["source"]["url"], _where(block)) for block in wanted}
        # In the order of the parts, so that of several failures the first part's is reported.
        fetched = {key: future.result() for key, future in futures.items()}
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return [[fetched.get(id(block), block) for block in blocks] for blocks in block_lists]


def _fetch(url: str, where: str) -> dict:
    conf = settings.BEAMCLAW
    timeout, max_bytes, max_redirects = (
        conf["IMAGE_FETCH_TIMEOUT_SECONDS"], conf["IMAGE_MAX_BYTES"], conf["IMAGE_FETCH_MAX_REDIRECTS"]
    )
    deadline = time.monotonic() + timeout
    current = url
    with address_policy.client(resolve_timeout=min(5.0, timeout), verify=True) as client:
        for _ in range(max_redirects + 1):
            hop = "" if current == url else f" (redirected to {current})"
            try:
                _check_shape(current)
                remaining = max(0.1, deadline - time.monotonic())
                with client.stream("GET", current, headers=_HEADERS, timeout=httpx.Timeout(remaining)) as response:
                    if response.is_redirect:  # a 3xx with a Location
                        current = urljoin(str(response.url), response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise _failed(where, f"{current} answered HTTP {response.status_code}")
                    media_type = _media_type(response, where, current)
                    data = _read_capped(response, max_bytes=max_bytes, deadline=deadline, where=where, url=current)
            except address_policy.TargetRefused as exc:
                raise ContentInvalid(f"{where}: image URL refused{hop}: {exc.message}.", field=where) from None
            except address_policy.OutboundError as exc:
                raise _failed(where, exc.message + hop) from None
            except BodyDecodeError as exc:
                raise _failed(where, f"could not read the body of {current}: {exc}") from None
            except httpx.TimeoutException:
                raise _failed(where, f"{current} did not answer within {timeout:g} seconds") from None
            except httpx.HTTPError as exc:
                raise _failed(where, f"could not fetch {current}: {exc}") from None
            image_bytes_check(data, media_type, where)
            return base64_image_block(media_type, data)
    raise _failed(where, f"{url} redirects more than {max_redirects} times")


def _failed(where: str, reason: str) -> ContentInvalid:
    return ContentInvalid(f"{where}: could not fetch the image URL: {reason}.", field=where)


def _check_shape(url: str) -> None:
    """What needs no network (raises TargetRefused); the address policy checks the rest as each request is sent."""
    parsed, _, _ = address_policy.parse_url(url)
    if parsed.userinfo:
        raise address_policy.TargetRefused("URLs with credentials (user:password@) are not fetched")


def _media_type(response: httpx.Response, where: str, url: str) -> str:
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    try:
        return image_media_type(content_type, where)
    except ContentInvalid:
        raise ContentInvalid(
            f"{where}: the image URL {url} answered with Content-Type {content_type or '(none)'}; an image must be "
            f"{IMAGES_ACCEPTED}.",
            field=where,
        ) from None


def _read_capped(response: httpx.Response, *, max_bytes: int, deadline: float, where: str, url: str) -> bytes:
    too_large = ContentInvalid(
        f"{where}: the image at {url} is larger than {bytes_text(max_bytes)}, the most accepted per image.",
        field=where,
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes and not response.headers.get("content-encoding"):
        raise too_large
    body = bytearray()
    for chunk in decoded_chunks(response.iter_raw(), response.headers.get("content-encoding")):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("deadline passed", request=response.request)
    return bytes(body)
