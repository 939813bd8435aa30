import json
import subprocess
import sys
import uuid

import httpx

from tenants.models import Agent, ApiKey, Tenant
from tests.conftest import ROOT


def manage(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_create_tenant_prints_a_working_key(live, service_env):
    slug = f"acme-{uuid.uuid4().hex[:6]}"
    result = manage("create_tenant", slug, "--agent", "helper", "--model", "claude-test-model", env=service_env)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["tenant"] == slug and printed["agent"] == "helper"
    assert printed["api_key"].startswith("bc_")

    assert Agent.objects.get(tenant__slug=slug, slug="helper").model == "claude-test-model"
    # Only a hash of the key is stored.
    assert not ApiKey.objects.filter(key_hash=printed["api_key"]).exists()
    # The first key has every right; narrower keys are made from it.
    assert sorted(ApiKey.objects.get(tenant__slug=slug).scopes) == ["admin", "chat", "read"]
    models = httpx.get(f"{live}/v1/models", headers={"Authorization": f"Bearer {printed['api_key']}"}, timeout=10)
    assert [m["id"] for m in models.json()["data"]] == ["helper"]


def test_create_tenant_refuses_duplicates_and_bad_slugs(service_env):
    slug = f"dup-{uuid.uuid4().hex[:6]}"
    assert manage("create_tenant", slug, env=service_env).returncode == 0
    again = manage("create_tenant", slug, env=service_env)
    assert again.returncode != 0 and "already exists" in again.stderr and "--exists-ok" in again.stderr

    reissued = manage("create_tenant", slug, "--exists-ok", env=service_env)
    assert reissued.returncode == 0
    assert ApiKey.objects.filter(tenant__slug=slug).count() == 2

    bad = manage("create_tenant", "Not A Slug!", env=service_env)
    assert bad.returncode != 0 and "slug" in bad.stderr
    assert not Tenant.objects.filter(slug="Not A Slug!").exists()
