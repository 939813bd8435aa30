"""web_fetch: SSRF refusals on every hop, DNS pinning, limits and HTML to Markdown.

Every server here listens on 127.0.0.1; `localhost:<WEB_PORT>` is the one name the operator allowlist
admits. Refused targets are refused before any connection, so no test sends traffic anywhere else.
"""

import ipaddress
import socket

import pytest

from beamclaw_project.infra import address_policy
from tests.tools.conftest import WEB_PORT, invoke
from tools.builtins.web_fetch import run_web_fetch

ALLOWED = f"http://localhost:{WEB_PORT}"


def fetch_tool(url: str, **extra) -> dict:
    return run_web_fetch(None, {"url": url, **extra})


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd00:ec2::254", "unique-local"),
        ("100.100.100.200", "non-public"),  # Alibaba metadata, shared address space
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_named(address, reason):
    assert reason in address_policy.non_public_reason(ipaddress.ip_address(address))


def test_public_addresses_pass():
    for address in ("93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"):
        assert address_policy.non_public_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1/", "refused to fetch"),
        ("http://127.1/", "refused to fetch"),
        ("http://2130706433/", "refused to fetch"),
        ("http://0x7f000001/", "refused to fetch"),
        ("http://0177.0.0.1/", "invalid URL"),
        ("http://[::1]/", "refused to fetch"),
        ("http://[::ffff:127.0.0.1]/", "refused to fetch"),
        ("http://10.0.0.1/", "refused to fetch"),
        ("http://169.254.169.254/latest/meta-data/", "refused to fetch"),
        ("http://0.0.0.0/", "refused to fetch"),
        # (The port differs per process: ids that do not name it, so parallel test processes agree.)
        pytest.param(f"http://localhost:{WEB_PORT + 1}/", "resolves to 127.0.0.1", id="localhost"),  # a name resolving to loopback
        pytest.param(f"http://LocalHost:{WEB_PORT + 1}/", "resolves to 127.0.0.1", id="LocalHost"),
        # the allowlist names a host, not its addresses
        pytest.param(f"http://127.0.0.1:{WEB_PORT}/text", "refused to fetch", id="allowed-port-by-address"),
    ],
)
def test_non_public_targets_are_refused_before_connecting(url, why, web_server):
    hits = len(web_server.hits)
    result = fetch_tool(url)
    assert result["ok"] is False and why in result["error"], result
    assert len(web_server.hits) == hits


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "gopher://x/", "not-a-url", "http://user:pw@example.com/"])
def test_only_plain_http_urls(url):
    result = fetch_tool(url)
    assert result["ok"] is False and result["error"]


def test_a_name_resolving_to_a_mix_of_public_and_private_addresses_is_refused(monkeypatch):
    real = socket.getaddrinfo

    def mixed(host, port, *args, **kwargs):
        if host == "mixed.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in ("93.184.216.34", "10.1.2.3")]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", mixed)
    result = fetch_tool("http://mixed.example/")
    assert result["ok"] is False and "resolves to 10.1.2.3" in result["error"]


def test_allowlisted_host_is_fetched_and_html_becomes_markdown(web_server):
    result = fetch_tool(f"{ALLOWED}/page")
    assert result["ok"] and result["status"] == 200 and result["title"] == "Test page"
    text = result["output"]
    assert "# Hello" in text and "**bold**" in text and "& a" in text
    assert f"[link]({ALLOWED}/other)" in text and "- one\n- two" in text and "```\n  code\n  block\n```" in text
    assert "alert" not in text and "color:red" not in text


def test_redirect_to_a_private_address_is_refused_before_it_is_followed(web_server):
    for target in ("http://10.0.0.1/admin", "http://169.254.169.254/latest/meta-data/", f"http://127.0.0.1:{WEB_PORT}/text",
                   "http://[::1]/", f"http://localhost:{WEB_PORT + 1}/"):
        hits = len(web_server.hits)
        result = fetch_tool(f"{ALLOWED}/to?{target}")
        assert result["ok"] is False and "refused to fetch" in result["error"], (target, result)
        assert web_server.hits[hits:] == [f"/to?{target}"], "nothing after the redirect was requested"


def test_redirect_limits(web_server):
    ok = fetch_tool(f"{ALLOWED}/chain/3")
    assert ok["ok"] and ok["output"] == "plain text body" and len(ok["redirects"]) == 4
    too_many = fetch_tool(f"{ALLOWED}/chain/10")
    assert too_many["ok"] is False and "too many redirects" in too_many["error"]


def test_size_time_and_type_limits(web_server, tools_settings):
    big = fetch_tool(f"{ALLOWED}/big", max_chars=1000)
    assert big["ok"] and big["truncated"] and len(big["output"]) == 1000
    # This test is about the time limit itself, so it shortens it (in this process only) from 30 s to 3 s.
    tools_settings.BEAMCLAW_TOOLS = {**tools_settings.BEAMCLAW_TOOLS, "WEB_FETCH_TIMEOUT_SECONDS": 3.0}
    slow = fetch_tool(f"{ALLOWED}/slow")  # drips forever
    assert slow["ok"] and slow["truncated"] and slow["output"].startswith("drip")
    binary = fetch_tool(f"{ALLOWED}/binary")
    assert binary["ok"] is False and "not text" in binary["error"]
    missing = fetch_tool(f"{ALLOWED}/missing")
    assert missing["ok"] is False and missing["status"] == 404 and "HTTP 404" in missing["error"]


def test_connection_goes_to_the_checked_address(web_server, monkeypatch, tools_settings):
    """DNS rebinding: the name resolves to 127.0.0.1 when checked and to 127.0.0.2 (where nothing
    listens) afterwards. The fetch succeeds only if it connects to the address it checked."""
    tools_settings.BEAMCLAW_TOOLS = {**tools_settings.BEAMCLAW_TOOLS, "WEB_FETCH_ALLOW_HOSTS": [f"rebind.test:{WEB_PORT}"]}
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    result = fetch_tool(f"http://rebind.test:{WEB_PORT}/host")
    assert result["ok"], result
    assert result["output"] == f"rebind.test:{WEB_PORT}", "the Host header keeps the name"
    assert lookups == ["rebind.test"], "resolved once, then pinned"


def test_https_keeps_the_name_for_sni_and_certificate_checks():
    target = address_policy.check_url("https://93.184.216.34/")
    assert target.address == "93.184.216.34" and target.extensions == {"sni_hostname": "93.184.216.34"}
    named = address_policy.Target(url=address_policy.httpx.URL("https://example.com:8443/x"), host="example.com", port=8443, address="93.184.216.34")
    assert str(named.pinned_url) == "https://93.184.216.34:8443/x" and named.extensions == {"sni_hostname": "example.com"}


def test_web_fetch_through_the_api(live, tenant, web_server):
    ok = invoke(live, tenant, "web_fetch", {"url": f"{ALLOWED}/page"})
    assert ok.status_code == 200 and ok.json()["ok"] and "# Hello" in ok.json()["output"]
    for url in ("http://127.0.0.1/", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
                f"http://localhost:{WEB_PORT + 1}/", f"{ALLOWED}/to?http://10.0.0.1/"):
        refused = invoke(live, tenant, "web_fetch", {"url": url})
        assert refused.status_code == 200 and refused.json()["ok"] is False, url
        assert "refused to fetch" in refused.json()["error"], refused.json()
    assert invoke(live, tenant, "web_fetch", {"url": f"{ALLOWED}/text"}).json()["output"] == "plain text body"
