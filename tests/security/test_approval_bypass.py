"""An approval covers exactly what the approver saw. Attack: get `echo safe` approved "always", then run
the same command with another env, workdir or background flag (GIT_CONFIG_* once turned an approved
`git status` into arbitrary code), through /api/tools/invoke and through the model alike."""

import httpx
import pytest

from sessions.models import Run
from tenants.models import Agent
from tests.conftest import wait_until
from tests.tools.conftest import requires_bwrap
from tests.tools.test_tool_loop import ask, session_for, tool
from tools.models import Approval

COMMAND = "echo safe"


@pytest.fixture
def approved_always(live, tenant):
    """The tenant's agent, on_miss, after a human chose "allow always" for `echo safe`."""
    Agent.objects.filter(pk=tenant.agent.pk).update(approval={"mode": "on_miss", "allowlist": []})
    api = httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=60)
    pending = api.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": COMMAND}})
    assert pending.status_code == 202, pending.text
    api.post(f"/approvals/{pending.json()['id']}/approve/", json={"always": True}).raise_for_status()
    assert Agent.objects.get(pk=tenant.agent.pk).approval["allowlist"] == [f"exec:={COMMAND}"]
    yield api
    api.close()


@pytest.mark.parametrize(
    "extra",
    [
        {"env": {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.pager", "GIT_CONFIG_VALUE_0": "sh -c id"}},
        {"workdir": "elsewhere"},
        {"background": True},
    ],
)
def test_the_same_command_with_other_inputs_needs_a_new_approval(approved_always, extra):
    response = approved_always.post(
        "/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": COMMAND, **extra}}
    )
    assert response.status_code == 202, "not covered by the approval of the bare command"
    assert response.json()["input"] == {"command": COMMAND, **extra}, "the approver sees every input"


@requires_bwrap
def test_exactly_what_was_approved_runs_without_asking(approved_always):
    response = approved_always.post(
        "/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": {"command": COMMAND, "timeout": 20}}
    )
    assert response.status_code == 200 and response.json()["output"] == "safe\n"


def test_the_model_cannot_smuggle_env_past_an_approval(approved_always, tenant):
    run = ask(session_for(tenant), tool("exec", {"command": COMMAND, "env": {"GIT_CONFIG_COUNT": "1", "GIT_DIR": "/x"}}))
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "awaiting_approval", timeout=30, message="the run to ask")
    approval = Approval.objects.get(tool_call__run=run)
    assert approval.input["env"] == {"GIT_CONFIG_COUNT": "1", "GIT_DIR": "/x"}


def test_allow_always_on_an_input_with_env_covers_that_env_only(approved_always):
    with_env = {"command": COMMAND, "env": {"GREETING": "hi"}}
    pending = approved_always.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": with_env})
    approved_always.post(f"/approvals/{pending.json()['id']}/approve/", json={"always": True}).raise_for_status()
    other_env = {"command": COMMAND, "env": {"GREETING": "hi", "GIT_DIR": "/x"}}
    response = approved_always.post("/tools/invoke", json={"agent": "assistant", "tool": "exec", "input": other_env})
    assert response.status_code == 202
