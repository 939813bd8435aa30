"""Images in messages, end to end: inline ones checked, linked ones fetched by the gateway under the outbound
address policy and stored as base64, so the model sees the same bytes at every step (docs/images.md).

The fake model echoes an image block as `[image: image/png, N bytes]` (or `[image: <url>]` for a URL it would
have had to fetch itself), so each test sees exactly what reached the model. Web sites playing image hosts
listen on WEBHOOK_HOST, the one non-public address the test processes' policy admits (tests/conftest.py).
"""

import json
from http.server import BaseHTTPRequestHandler

import httpx
import openai
import pytest
from django.db import transaction

from sessions.content import ContentInvalid, content_parse
from sessions.images import USER_AGENT, images_fetch, turns_images_fetch
from sessions.models import AgentSession, Message
from tests.conftest import WEBHOOK_HOST, http_server, openai_client
from tests.sessions.test_content import base64_block, data_url, image_part, jpeg, png
from tests.sessions.test_rest_api import wait_for_run
from tests.sessions.test_websocket import WS

# A port nothing listens on: a refused URL must be refused before any connection is tried.
LOOPBACK_URL = "http://127.0.0.1:9/cat.png"
LOOPBACK_REFUSAL = "image URL refused: 127.0.0.1 is a loopback address. Only public addresses are reached"


class _ImageSite(BaseHTTPRequestHandler):
    """Answers each path from `server.routes` (status, headers, body); a header set to None is left out, and
    without a Content-Length the body ends with the connection (HTTP/1.0)."""

    def do_GET(self):
        self.server.hits.append((self.path, self.headers.get("User-Agent")))
        status, headers, body = self.server.routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"no such image"))
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            if value is not None:
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def site():
    with http_server(_ImageSite, host=WEBHOOK_HOST) as server:
        server.routes = {}
        server.url = f"http://{WEBHOOK_HOST}:{server.server_address[1]}"
        yield server


def ask(live, bundle, *parts, user: str | None = None):
    return openai_client(live, bundle, timeout=60).chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": list(parts)}], **({"user": user} if user else {}),
    )


def refusal(live, bundle, messages) -> dict:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(live, bundle, timeout=60).chat.completions.create(model="assistant", messages=messages)
    return refused.value.body


TEXT = {"type": "text", "text": "what is this?"}


# --- the OpenAI-compatible API -----------------------------------------------------------------------


def test_an_inline_png_reaches_the_model_and_stays_in_the_transcript(live, tenant):
    image = png(2, 3)
    reply = ask(live, tenant, TEXT, image_part(data_url(image)), user="pictures")
    assert reply.choices[0].message.content == f"Echo: what is this? [image: image/png, {len(image)} bytes]"
    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:pictures")
    assert session.messages.get(role="user").content == [TEXT, base64_block(image)]


def test_a_linked_image_is_fetched_once_by_the_gateway_and_reaches_the_model_as_base64(live, tenant, site):
    image = png(4, 4)
    site.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, image)
    site.routes["/latest"] = (302, {"Location": "/cat.png"}, b"")

    reply = ask(live, tenant, TEXT, image_part(f"{site.url}/latest"), user="linked")

    assert reply.choices[0].message.content == f"Echo: what is this? [image: image/png, {len(image)} bytes]"
    assert site.hits == [("/latest", USER_AGENT), ("/cat.png", USER_AGENT)]
    session = AgentSession.objects.get(tenant=tenant.tenant, key="agent:assistant:linked")
    assert session.messages.get(role="user").content == [TEXT, base64_block(image)]


def test_a_loopback_image_url_is_a_400_naming_the_part_and_nothing_is_stored(live, tenant):
    error = refusal(live, tenant, [{"role": "user", "content": [TEXT, image_part(LOOPBACK_URL)]}])
    assert error["message"].startswith(f"messages[0].content[1]: {LOOPBACK_REFUSAL}"), error
    assert error["param"] == "messages[0].content[1]" and error["code"] == "invalid_request"
    assert not Message.objects.filter(session__tenant=tenant.tenant).exists()


def test_an_image_url_the_site_cannot_serve_as_an_image_is_a_400(live, tenant, site):
    site.routes["/page"] = (200, {"Content-Type": "text/html"}, b"<html>a page, not a picture</html>")
    error = refusal(live, tenant, [{"role": "user", "content": [TEXT, image_part(f"{site.url}/page")]}])
    assert error["param"] == "messages[0].content[1]"
    assert f"the image URL {site.url}/page answered with Content-Type text/html; an image must be PNG" in error["message"]
    error = refusal(live, tenant, [{"role": "user", "content": [image_part(f"{site.url}/gone.png")]}])
    assert error["message"] == f"messages[0].content[0]: could not fetch the image URL: {site.url}/gone.png answered HTTP 404."


@pytest.mark.parametrize(
    "part, names",
    [
        (image_part("data:image/svg+xml;base64,PHN2Zz48L3N2Zz4="), "'image/svg+xml' is not supported; images must be PNG, JPEG, GIF or WebP"),
        (image_part(data_url(jpeg(), "image/png")), "the data is a JPEG image, not image/png as declared"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, ".type 'file' is not supported: files (PDFs among them) cannot"),
        ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}, ".type 'input_audio' is not supported"),
    ],
)
def test_media_no_model_takes_is_a_400_naming_the_part(live, tenant, part, names):
    error = refusal(live, tenant, [
        {"role": "system", "content": "Describe pictures."},
        {"role": "user", "content": [TEXT, {"type": "text", "text": "and this:"}, part]},
    ])
    assert error["param"] == "messages[1].content[2]", error
    assert error["message"].startswith("messages[1].content[2]") and names in error["message"], error


def test_too_many_images_and_too_large_an_image_are_400s_naming_the_limits(live, tenant):
    error = refusal(live, tenant, [{"role": "user", "content": [TEXT] + [image_part(data_url(png()))] * 9}])
    assert error["message"] == "messages[0].content has 9 images; at most 8 are allowed in one message."

    # 4 MB of image: over the per-image cap, in a body (5.3 MB of JSON) the message routes take.
    large = png(padding=4_000_000)
    error = refusal(live, tenant, [{"role": "user", "content": [TEXT, image_part(data_url(large))]}])
    assert error["message"] == (
        f"messages[0].content[1]: the image is {len(large)} bytes; at most 3.75 MiB (3932160 bytes) are accepted per image."
    )


def test_a_body_over_the_message_limit_is_a_413_saying_the_limit(live, tenant):
    body = json.dumps({"model": "assistant", "messages": [{"role": "user", "content": "x" * (20 * 1024 * 1024)}]})
    response = httpx.post(
        f"{live}/v1/chat/completions", content=body, timeout=60,
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert "larger than 20 MiB (20971520 bytes), the most POST /v1/chat/completions accepts" in error["message"]


# --- REST and the WebSocket ------------------------------------------------------------------------


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=60) as client:
        yield client


@pytest.fixture
def session_id(api) -> str:
    return api.post("/sessions/", json={"agent": "assistant", "key": "pictures"}).json()["id"]


def test_rest_takes_inline_and_linked_images_and_refuses_a_loopback_url(api, session_id, site):
    inline, linked = png(2, 2), png(3, 1)
    site.routes["/linked.png"] = (200, {"Content-Type": "image/png; charset=binary"}, linked)
    accepted = api.post(f"/sessions/{session_id}/messages/", json={
        "content": [TEXT, image_part(data_url(inline)), {"type": "image", "source": {"type": "url", "url": f"{site.url}/linked.png"}}],
    })
    assert accepted.status_code == 202, accepted.text
    assert wait_for_run(api, accepted.json()["run"]["id"])["status"] == "succeeded"
    user, assistant = api.get(f"/sessions/{session_id}/messages/").json()["results"]
    assert user["content"] == [TEXT, base64_block(inline), base64_block(linked)]
    assert assistant["text"] == (
        f"Echo: what is this? [image: image/png, {len(inline)} bytes] [image: image/png, {len(linked)} bytes]"
    )

    refused = api.post(f"/sessions/{session_id}/messages/", json={"content": [image_part(LOOPBACK_URL)]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["content"][0].startswith(f"content[0]: {LOOPBACK_REFUSAL}")
    assert api.get(f"/sessions/{session_id}/messages/").json()["count"] == 2


def test_rest_message_bodies_may_carry_large_images_other_bodies_stay_small(api, session_id):
    # 4 MB of image, 5.3 MB of JSON: read and judged (the image is over its cap), not refused at the door.
    large = png(padding=4_000_000)
    refused = api.post(f"/sessions/{session_id}/messages/", json={"content": [image_part(data_url(large))]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["content"] == [
        f"content[0]: the image is {len(large)} bytes; at most 3.75 MiB (3932160 bytes) are accepted per image."
    ]

    too_large = api.post("/sessions/", json={"agent": "assistant", "key": "x" * (3 * 1024 * 1024)})
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["code"] == "request_too_large"
    assert "larger than 2 MiB (2097152 bytes), the most POST /api/sessions/ accepts" in too_large.json()["detail"]
    # Sent in chunks, without a Content-Length: measured, and refused the same.
    chunked = api.post("/sessions/", headers={"Content-Type": "application/json"},
                       content=iter([b'{"agent": "assistant", "key": "', b"x" * (3 * 1024 * 1024), b'"}']))
    assert chunked.status_code == 413 and chunked.json()["code"] == "request_too_large", chunked.text


def test_websocket_chat_send_fetches_a_linked_image(live, tenant, session_id, site):
    image = png(5, 2)
    site.routes["/ws.png"] = (200, {"Content-Type": "image/png"}, image)
    client = WS(live, tenant.api_key)
    try:
        sent = client.call("chat.send", {"session": session_id, "message": [TEXT, image_part(f"{site.url}/ws.png")]})
        assert sent["ok"], sent
        events = client.events_until_done(sent["payload"]["run_id"])
        refused = client.call("chat.send", {"session": session_id, "message": [image_part(LOOPBACK_URL)]})
    finally:
        client.close()
    assert events[-1]["event"] == "run.completed"
    assert events[-1]["payload"]["text"] == f"Echo: what is this? [image: image/png, {len(image)} bytes]"
    assert refused["ok"] is False and refused["error"]["code"] == "invalid_params"
    assert refused["error"]["message"].startswith(f"params.message[0]: {LOOPBACK_REFUSAL}")


# --- the fetch itself, in this process ---------------------------------------------------------------


@pytest.fixture
def policy(settings):
    """The test processes' policy, stated here rather than relied on, and the default limits."""
    settings.BEAMCLAW_OUTBOUND = {"ALLOW_CIDRS": [f"{WEBHOOK_HOST}/32"]}
    return settings


def fetched(url: str) -> list[dict]:
    return images_fetch(content_parse([TEXT, image_part(url)], where="messages[0].content"))


def refused_fetch(url: str) -> str:
    with pytest.raises(ContentInvalid) as refused:
        fetched(url)
    assert refused.value.field == "messages[0].content[1]"
    return refused.value.message


def test_fetch_follows_a_few_redirects_each_checked_by_the_policy(policy, site):
    image = png()
    site.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, image)
    for hop in range(4):
        site.routes[f"/hop{hop}"] = (301, {"Location": f"/hop{hop + 1}" if hop < 3 else "/cat.png"}, b"")
    assert fetched(f"{site.url}/hop1") == [TEXT, base64_block(image)]  # three redirects: the most allowed
    assert refused_fetch(f"{site.url}/hop0") == (
        f"messages[0].content[1]: could not fetch the image URL: {site.url}/hop0 redirects more than 3 times."
    )
    site.routes["/inside"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    assert refused_fetch(f"{site.url}/inside").startswith(
        "messages[0].content[1]: image URL refused (redirected to http://169.254.169.254/latest/meta-data/): "
        "169.254.169.254 is a link-local (this includes cloud metadata services) address."
    )
    assert [path for path, _ in site.hits].count("/inside") == 1


def test_fetch_checks_the_type_and_size_of_what_the_site_sends(policy, site):
    policy.BEAMCLAW = {**policy.BEAMCLAW, "IMAGE_MAX_BYTES": 1000}
    site.routes["/lies.png"] = (200, {"Content-Type": "image/png"}, jpeg())
    site.routes["/untyped"] = (200, {"Content-Type": None}, png())
    site.routes["/big.png"] = (200, {"Content-Type": "image/png"}, png(padding=2000))
    site.routes["/big-unsized.png"] = (200, {"Content-Type": "image/png", "Content-Length": None}, png(padding=2000))
    site.routes["/small-unsized.png"] = (200, {"Content-Type": "image/png", "Content-Length": None}, png())

    assert "the data is a JPEG image, not image/png as declared" in refused_fetch(f"{site.url}/lies.png")
    assert f"{site.url}/untyped answered with Content-Type (none); an image must be PNG" in refused_fetch(f"{site.url}/untyped")
    for path in ("/big.png", "/big-unsized.png"):
        assert refused_fetch(f"{site.url}{path}") == (
            f"messages[0].content[1]: the image at {site.url}{path} is larger than 1000 bytes, the most accepted per image."
        )
    assert fetched(f"{site.url}/small-unsized.png") == [TEXT, base64_block(png())]


def test_fetch_refuses_credentials_and_other_schemes_without_a_request(policy, site):
    assert refused_fetch(f"http://user:secret@{WEBHOOK_HOST}:{site.server_address[1]}/a.png") == (
        "messages[0].content[1]: image URL refused: URLs with credentials (user:password@) are not fetched."
    )
    site.routes["/ftp"] = (302, {"Location": "ftp://example.com/a.png"}, b"")
    assert "image URL refused (redirected to ftp://example.com/a.png): only http and https" in refused_fetch(f"{site.url}/ftp")
    assert [path for path, _ in site.hits] == ["/ftp"]


def test_the_images_of_a_whole_request_are_fetched_together_and_capped(policy, site):
    policy.BEAMCLAW = {**policy.BEAMCLAW, "IMAGE_URLS_MAX_PER_REQUEST": 2}
    first, second = png(1, 2), png(2, 1)
    site.routes["/1.png"] = (200, {"Content-Type": "image/png"}, first)
    site.routes["/2.png"] = (200, {"Content-Type": "image/png"}, second)
    turns = [
        ("user", content_parse([image_part(f"{site.url}/1.png")], where="messages[0].content")),
        ("assistant", content_parse("a red pixel", where="messages[1].content")),
        ("user", content_parse([TEXT, image_part(f"{site.url}/2.png")], where="messages[2].content")),
    ]
    assert turns_images_fetch(turns) == [
        ("user", [base64_block(first)]), ("assistant", [{"type": "text", "text": "a red pixel"}]),
        ("user", [TEXT, base64_block(second)]),
    ]
    turns.append(("user", content_parse([image_part(f"{site.url}/1.png")], where="messages[3].content")))
    with pytest.raises(ContentInvalid) as refused:
        turns_images_fetch(turns)
    assert refused.value.message == (
        "messages[3].content[0]: the request links 3 images by URL; at most 2 are fetched for one request. "
        "Send the others inline, as data URLs."
    )


def test_fetching_inside_a_transaction_is_a_programming_error(policy, site):
    site.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, png())
    with transaction.atomic(), pytest.raises(AssertionError, match="before any transaction"):
        fetched(f"{site.url}/cat.png")
    assert site.hits == []
