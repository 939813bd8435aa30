"""Skills in a real run: what the model is told (the fake model records every request), reading a skill
through the `skill` tool, and the exec sandbox's read-only view of skill folders."""

import json
import uuid

import httpx

from sessions.models import AgentSession, Message
from sessions.runs import run_submit
from tenants.models import Agent
from tests.conftest import wait_until
from tests.skills.conftest import skill_md
from tests.tools.conftest import requires_bwrap, wait_for_run


def ask(bundle, text: str):
    session = AgentSession.objects.create(tenant=bundle.tenant, agent=bundle.agent, key=f"agent:assistant:{uuid.uuid4().hex[:8]}")
    return wait_for_run(run_submit(session=session, content=[{"type": "text", "text": text}], trigger="api").pk)


def final_text(run) -> str:
    return Message.objects.filter(session=run.session, role="assistant").order_by("-seq").first().text


def upload(live, bundle, text: str) -> dict:
    response = httpx.post(f"{live}/api/skills/", json={"skill_md": text}, headers=bundle.headers, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def system_prompt_seen(fake_requests, marker: str) -> str:
    return wait_until(
        lambda: next((r["body"]["system"] for r in reversed(fake_requests(50)) if marker in json.dumps(r["body"]["messages"])), None),
        timeout=10, message="the model's request",
    )


def test_the_prompt_lists_eligible_skills_compactly_and_holds_always_skills_whole(live, make_tenant, fake_requests, skills_dir):
    bundle = make_tenant(system_prompt="You are Ada.")
    always_body = "Always answer in haiku.\nScripts are in {baseDir}/bin."
    upload(live, bundle, skill_md("haiku", "House style.", front="always: true\n", body=always_body))
    upload(live, bundle, skill_md("pdf-tools", "Extract text from PDF files.", body="SECRET-BODY-NOT-IN-PROMPT"))
    upload(live, bundle, skill_md("video", "Cut videos.", front="requires: {bins: [ffmpeg-not-here]}\n"))
    skills_dir.write("local", skill_md("local-notes", "Keep notes in /workspace/notes.md."))
    Agent.objects.filter(pk=bundle.agent.pk).update(skills_dirs=[str(skills_dir.path)])

    marker = f"marker-{uuid.uuid4().hex[:8]}"
    run = ask(bundle, marker)
    assert run.status == "succeeded", run.error
    system = system_prompt_seen(fake_requests, marker)
    assert system.startswith("You are Ada.\n\n## Skills\n")
    assert "- pdf-tools: Extract text from PDF files.\n" in system
    assert "- local-notes: Keep notes in /workspace/notes.md." in system
    assert "`skill` tool" in system
    assert "SECRET-BODY-NOT-IN-PROMPT" not in system, "only the list, not the bodies"
    assert "video" not in system, "an ineligible skill is not offered"
    assert "### Skill: haiku\nHouse style.\n\nAlways answer in haiku.\nScripts are in /skills/haiku/bin." in system

    # Without the skill tool the model cannot read skills, so none is listed; `always` ones stay.
    Agent.objects.filter(pk=bundle.agent.pk).update(tool_policy={"allow": [], "deny": ["group:skills"]})
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    ask(bundle, marker)
    system = system_prompt_seen(fake_requests, marker)
    assert "pdf-tools" not in system and "Always answer in haiku." in system


def test_a_skill_uploaded_or_deleted_between_runs_is_in_the_next_runs_prompt_or_gone(live, make_tenant, fake_requests):
    # Workers keep a tenant's uploads while their revision (count, last change) is unchanged; a step reads
    # that revision with its run, so the change must show in the very next run.
    bundle = make_tenant()
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    ask(bundle, marker)
    assert "- fresh-skill:" not in system_prompt_seen(fake_requests, marker)

    uploaded = upload(live, bundle, skill_md("fresh-skill", "Uploaded between two runs."))
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    ask(bundle, marker)
    assert "- fresh-skill: Uploaded between two runs." in system_prompt_seen(fake_requests, marker)

    deleted = httpx.delete(f"{live}/api/skills/{uploaded['id']}/", headers=bundle.headers, timeout=30)
    assert deleted.status_code == 204, deleted.text
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    ask(bundle, marker)
    assert "fresh-skill" not in system_prompt_seen(fake_requests, marker)


def test_the_agent_reads_a_skill_with_the_skill_tool(live, make_tenant, skills_dir):
    bundle = make_tenant()
    upload(live, bundle, skill_md("deploy", "Deploys the app.", body="Run {baseDir}/run.sh then check."))
    skills_dir.write("report", skill_md("report", "Writes reports."), files={"templates/weekly.md": "# Weekly {date}"})
    skills_dir.write("video", skill_md("video", "Cuts videos.", front="requires: {bins: [ffmpeg-not-here]}\n"))
    (skills_dir.path / "report" / "escape").symlink_to("/etc/hostname")
    Agent.objects.filter(pk=bundle.agent.pk).update(skills_dirs=[str(skills_dir.path)])

    run = ask(bundle, '[[tool=skill:{"name": "deploy"}]]')
    assert run.status == "succeeded", run.error
    assert "Run /skills/deploy/run.sh then check." in final_text(run)
    run = ask(bundle, '[[tool=skill:{"name": "report", "path": "templates/weekly.md"}]]')
    assert "# Weekly {date}" in final_text(run)
    run = ask(bundle, '[[tool=skill:{"name": "report", "path": "../../../etc/passwd"}]]')
    assert "Error: must be a path relative to the skill's folder, without '..'" in final_text(run)
    run = ask(bundle, '[[tool=skill:{"name": "report", "path": "escape"}]]')
    assert "Error: 'escape' leads out of the skill's folder" in final_text(run)
    run = ask(bundle, '[[tool=skill:{"name": "video"}]]')
    assert "Error: skill 'video' is not available to this agent: missing binary: ffmpeg-not-here" in final_text(run)
    run = ask(bundle, '[[tool=skill:{"name": "nothing"}]]')
    assert "Error: there is no skill named 'nothing'" in final_text(run)


@requires_bwrap
def test_the_sandbox_sees_skill_folders_read_only(live, make_tenant, skills_dir):
    from tools.sandbox import SandboxSpec, sandbox_run, sandbox_uid, workspace_prepare
    from tools.skills import skill_mounts

    bundle = make_tenant()
    upload(live, bundle, skill_md("uploaded-one", "From an upload.", body="uploaded body"))
    skills_dir.write("served", skill_md("served", "From a server folder.", body="served body"))
    agent = Agent.objects.get(pk=bundle.agent.pk)
    agent.skills_dirs = [str(skills_dir.path)]
    agent.save()
    uid = sandbox_uid(tenant_slug=bundle.tenant.slug, scope="skills-test")
    workspace = workspace_prepare(tenant_slug=bundle.tenant.slug, scope="skills-test", uid=uid)
    command = (
        "cat /skills/uploaded-one/SKILL.md /skills/served/SKILL.md; "
        "echo x > /skills/served/new.txt || echo WRITE-REFUSED; "
        "rm /skills/uploaded-one/SKILL.md || echo DELETE-REFUSED"
    )
    process = sandbox_run(SandboxSpec(command=command, workspace=workspace, uid=uid, timeout=30, skills=skill_mounts(agent)))
    assert process.wait(60)
    output = process.output.text()
    assert "uploaded body" in output and "served body" in output, output
    assert "Read-only file system" in output and "WRITE-REFUSED" in output and "DELETE-REFUSED" in output, output
    assert not (skills_dir.path / "served" / "new.txt").exists()


def test_a_skill_uploaded_is_in_the_next_chat_completion_s_prompt(live, make_tenant, fake_requests):
    # A chat completion's first step gets its tenant's uploads' revision with its message (sessions/runs/
    # kernel.py, first_step_reads): a worker that listed the tenant's uploads before must list them again.
    bundle = make_tenant(system_prompt="You are Ada.")

    def prompt_of_a_chat_completion() -> str:
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        response = httpx.post(f"{live}/v1/chat/completions", headers=bundle.headers, timeout=30, json={
            "model": bundle.agent.slug, "messages": [{"role": "user", "content": marker}]})
        assert response.status_code == 200, response.text
        return system_prompt_seen(fake_requests, marker)

    upload(live, bundle, skill_md("pdf-tools", "Extract text from PDF files."))
    first = prompt_of_a_chat_completion()
    assert "- pdf-tools: Extract text from PDF files." in first and "csv-tools" not in first
    upload(live, bundle, skill_md("csv-tools", "Sort CSV files."))
    assert "- csv-tools: Sort CSV files." in prompt_of_a_chat_completion()
