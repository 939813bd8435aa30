"""The agent API for providers: fallbacks across providers, an agent's own base_url (an outbound target a
tenant chooses, so held to the address policy) and its write-only api_key."""

import httpx
import pytest


@pytest.fixture
def api(gateway, tenant):
    with httpx.Client(base_url=f"{gateway}/api", headers=tenant.headers, timeout=30) as client:
        yield client


def test_cross_provider_fallbacks_are_stored_as_given(api):
    fallbacks = ["claude-backup", {"provider": "openai", "model": "llama3.1:8b"}]
    created = api.post("/agents/", json={"slug": "chained", "model": "claude-x", "fallbacks": fallbacks})
    assert created.status_code == 201, created.text
    assert api.get("/agents/chained/").json()["fallbacks"] == fallbacks


@pytest.mark.parametrize(
    "fallbacks, mentions",
    [
        ([{"provider": "nowhere", "model": "m"}], "fallbacks[0].provider: unknown provider 'nowhere'"),
        (["ok", {"provider": "openai"}], "fallbacks[1].model"),
        (["ok", {"provider": "openai", "model": "m", "base_url": "https://x.example/v1"}], "fallbacks[1]: unexpected field 'base_url'"),
        ([""], "fallbacks[0]"),
        ([7], "fallbacks[0]"),
        ("claude-backup", "list"),
    ],
)
def test_malformed_fallbacks_are_400_naming_the_entry(api, fallbacks, mentions):
    response = api.post("/agents/", json={"slug": "chained", "fallbacks": fallbacks})
    assert response.status_code == 400
    assert mentions in " ".join(response.json()["fallbacks"])


@pytest.mark.parametrize(
    "base_url, reason",
    [
        ("http://169.254.169.254/v1", "link-local"),
        ("http://[fd00:ec2::254]/v1", "unique-local"),
        ("http://127.0.0.1:11434/v1", "loopback"),
        ("http://localhost:11434/v1", "loopback"),
        ("http://10.1.2.3:8000/v1", "private"),
        ("http://2130706433/v1", "loopback"),
        ("ftp://models.example/v1", "http"),
        ("https://user:secret@models.example/v1", "api_key"),
    ],
)
def test_a_base_url_the_address_policy_refuses_is_400_naming_it(api, base_url, reason):
    response = api.post("/agents/", json={"slug": "local", "provider": "openai", "model": "m", "base_url": base_url})
    assert response.status_code == 400, response.text
    assert reason in " ".join(response.json()["base_url"])
    patched = api.patch("/agents/assistant/", json={"base_url": base_url})
    assert patched.status_code == 400 and "base_url" in patched.json()


def test_a_public_base_url_is_accepted(api):
    response = api.patch("/agents/assistant/", json={"provider": "openai", "model": "m", "base_url": "https://93.184.215.14/v1"})
    assert response.status_code == 200, response.text
    assert response.json()["base_url"] == "https://93.184.215.14/v1"


def test_the_api_key_is_write_only(api):
    secret = "sk-tenant-very-secret-9876"
    created = api.post("/agents/", json={"slug": "keyed", "provider": "openai", "model": "m", "api_key": secret})
    assert created.status_code == 201, created.text
    listed = api.get("/agents/").json()["results"]
    shown = [created.json(), api.get("/agents/keyed/").json(), api.patch("/agents/keyed/", json={"name": "K"}).json(),
             next(agent for agent in listed if agent["slug"] == "keyed")]
    for agent in shown:
        assert "api_key" not in agent and agent["api_key_hint"] == "…9876"
        assert secret not in str(agent)
