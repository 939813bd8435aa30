"""beamclaw.yaml against the running system: a changed agent is what the next run uses, with the worker left
running, and `apply_config --watch` follows edits of the file (a bad edit leaves the last good state)."""

import json
import sys
import textwrap
import uuid

from tenants.models import Agent
from tests.conftest import openai_client, wait_until
from tests.procs import Process
from tests.tenants.test_config_file import run


def agent_file(bundle, prompt: str) -> str:
    return textwrap.dedent(f"""\
        tenants:
          {bundle.tenant.slug}:
            agents:
              assistant:
                model: {bundle.agent.model}
                system_prompt: {json.dumps(prompt)}
        """)


def system_prompt_seen(fake_requests, marker: str) -> str:
    return wait_until(
        lambda: next((r["body"]["system"] for r in reversed(fake_requests(50)) if marker in json.dumps(r["body"]["messages"])), None),
        timeout=10, message="the model's request",
    )


def ask(live, bundle, fake_requests) -> str:
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    reply = openai_client(live, bundle).chat.completions.create(model="assistant", messages=[{"role": "user", "content": marker}])
    assert reply.choices[0].message.content
    return system_prompt_seen(fake_requests, marker)


def test_the_next_run_uses_the_prompt_apply_config_set_without_a_worker_restart(live, tenant, fake_requests, tmp_path):
    path = tmp_path / "beamclaw.yaml"
    path.write_text(agent_file(tenant, "You are Ada, first edition."))
    out, _ = run("apply_config", str(path))
    assert f"~ update agent {tenant.tenant.slug}/assistant: system_prompt" in out
    assert ask(live, tenant, fake_requests).startswith("You are Ada, first edition.")

    path.write_text(agent_file(tenant, "You are Ada, second edition."))
    run("apply_config", str(path))
    assert ask(live, tenant, fake_requests).startswith("You are Ada, second edition.")


def test_watch_applies_each_edit_and_keeps_the_last_good_state_on_a_bad_one(tenant, service_env, log_dir, tmp_path):
    path = tmp_path / "beamclaw.yaml"
    path.write_text(agent_file(tenant, "Watched, version 1."))
    name = f"watch-{uuid.uuid4().hex[:6]}"
    proc = Process(name, [sys.executable, "manage.py", "apply_config", str(path), "--watch"], service_env, log_dir).start()
    agent = Agent.objects.filter(pk=tenant.agent.pk)
    try:
        wait_until(lambda: agent.get().system_prompt == "Watched, version 1.", timeout=30, message="the first apply")

        path.write_text(agent_file(tenant, "Watched, version 2."))
        wait_until(lambda: agent.get().system_prompt == "Watched, version 2.", timeout=10, message="the edit applied")

        path.write_text(agent_file(tenant, "Watched, version 3.").replace("model:", "max_tokens: lots\n        model:"))
        log = proc.log_path
        wait_until(lambda: "max_tokens: must be a whole number" in log.read_text(), timeout=10, message="the bad edit reported")
        assert agent.get().system_prompt == "Watched, version 2.", "a bad edit changes nothing"
        assert proc.alive, "and the watch goes on"

        path.write_text(agent_file(tenant, "Watched, version 4."))
        wait_until(lambda: agent.get().system_prompt == "Watched, version 4.", timeout=10, message="the fixed edit applied")
    finally:
        proc.stop()
