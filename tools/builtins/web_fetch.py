"""web_fetch: GET a public http(s) URL and return its readable text (Markdown for HTML).

Network safety lives in tools/web.py and the gateway's address policy (beamclaw_project/infra/
address_policy.py); this module shapes input and output for the model.
"""

from django.conf import settings

from tools.base import ToolContext, ToolSpec, error_result
from tools.web import FetchError, fetch, html_to_markdown, is_html, is_text_type

_conf = settings.BEAMCLAW_TOOLS  # schema bounds only

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "minLength": 1, "maxLength": 8192, "description": "An http:// or https:// URL."},
        "max_chars": {
            "type": "integer",
            "minimum": 100,
            "maximum": 200000,
            "description": f"Cut the returned text after this many characters (default {_conf['WEB_FETCH_MAX_CHARS']}).",
        },
    },
    "required": ["url"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Fetch a public web page or text document over http(s) and return its readable content (HTML is turned "
    "into Markdown). Private, local and cloud-metadata addresses are refused. No JavaScript is run."
)


def run_web_fetch(context: ToolContext, tool_input: dict) -> dict:
    max_chars = int(tool_input.get("max_chars") or settings.BEAMCLAW_TOOLS["WEB_FETCH_MAX_CHARS"])
    try:
        response = fetch(tool_input["url"])
    except FetchError as exc:
        return error_result(exc.message, url=tool_input["url"], **exc.details)
    meta = {
        "url": response.url,
        "final_url": response.final_url,
        "status": response.status,
        "content_type": response.content_type,
        "redirects": response.redirects,
    }
    if not is_text_type(response.content_type):
        return error_result(
            f"{response.final_url} returned {response.content_type}, which is not text; only HTML, text, JSON and XML are read",
            **meta,
        )
    text = response.body.decode(response.encoding or "utf-8", errors="replace")
    title = ""
    if is_html(response.content_type):
        title, text = html_to_markdown(text, base_url=response.final_url)
    truncated = response.truncated or len(text) > max_chars
    text = text[:max_chars]
    if not 200 <= response.status < 300:
        return error_result(f"HTTP {response.status} from {response.final_url}", output=text[:2000], title=title, **meta)
    return {"ok": True, "output": text, "title": title, "truncated": truncated, **meta}


def _render(result: dict) -> str:
    if not result.get("ok"):
        body = result.get("output") or ""
        return f"Error: {result.get('error')}" + (f"\n\n{body}" if body else "")
    header = f"URL: {result['final_url']}\n" + (f"Title: {result['title']}\n" if result.get("title") else "")
    note = "\n\n[content truncated]" if result.get("truncated") else ""
    return f"{header}\n{result['output']}{note}"


WEB_FETCH_TOOL = ToolSpec(
    name="web_fetch",
    description=DESCRIPTION,
    input_schema=INPUT_SCHEMA,
    group="group:web",
    run=run_web_fetch,
    subject=lambda tool_input: str(tool_input.get("url", "")),
    approval_ignores=frozenset({"max_chars"}),
    render=_render,
)
