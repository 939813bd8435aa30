"""beamclaw.yaml through `manage.py apply_config` / `export_config`, as an operator runs them: the plan they
print, what lands in Postgres (and in beat's schedule), and what a running worker does with it."""

import io
import textwrap
import uuid

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask

from channels_app.models import Binding, ChannelAccount
from cron.beat import periodic_task_name
from cron.models import CronJob
from tenants.models import Agent, Tenant
from tests.conftest import ROOT


def run(*args) -> tuple[str, str]:
    """apply_config / export_config in this process; (stdout, stderr). Raises CommandError on failure, with
    what it wrote to stderr attached as `.stderr`."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        exc.stderr = err.getvalue()
        raise
    return out.getvalue(), err.getvalue()


def write(tmp_path, text: str, name: str = "beamclaw.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def slug() -> str:
    return f"cfg-{uuid.uuid4().hex[:8]}"


def full_config(tenant: str, *, prompt: str = "You answer support questions.") -> str:
    return f"""\
        version: 1
        tenants:
          {tenant}:
            name: Acme Inc
            max_concurrent_runs: 5
            daily_token_budget: 2000000
            agents:
              support:
                model: claude-test-model
                system_prompt: {prompt}
                max_tokens: 2048
                fallbacks: [claude-test-fallback]
                tool_policy: {{allow: [web_fetch, cron], deny: [exec]}}
                approval: {{mode: on_miss, allowlist: [web_fetch]}}
                skills: {{disabled: [pdf-tools]}}
                sandbox: {{network: false}}
              triage:
                model: claude-test-model
                system_prompt: |
                  You sort incoming requests.
                  Costs: $5 per ticket, variables look like $${{NAME}}.
            channels:
              support-hook:
                kind: webhook
                agent: support
                token: ${{SUPPORT_HOOK_SECRET}}
                callback_url: https://example.com/replies
                bindings:
                  - match: {{peer_id: vip-customer}}
                    agent: triage
                    priority: 5
            cron_jobs:
              - name: morning-summary
                agent: support
                prompt: Summarize yesterday's tickets.
                schedule: {{kind: cron, expr: "0 9 * * 1-5", tz: Europe/Berlin}}
                deliver: {{kind: channel, channel: support-hook, to: ops-room}}
              - name: heartbeat
                agent: triage
                prompt: Say hi.
                session_target: isolated
                schedule: {{kind: every, every: 1h30m, anchor: "2030-01-01T00:00:00Z"}}
                deliver: {{kind: webhook, url: "https://example.com/cron", secret: "${{HEARTBEAT_SECRET}}"}}
                enabled: false
        """


@pytest.fixture
def secrets_env(monkeypatch):
    monkeypatch.setenv("SUPPORT_HOOK_SECRET", "hook-secret-1234")
    monkeypatch.setenv("HEARTBEAT_SECRET", "heartbeat-secret")
    return monkeypatch


def test_apply_creates_everything_and_applying_again_changes_nothing(tmp_path, secrets_env):
    tenant = slug()
    path = write(tmp_path, full_config(tenant))
    out, _ = run("apply_config", str(path))
    assert f"+ create tenant {tenant}" in out
    assert f"+ create agent {tenant}/support" in out and f"+ create channel {tenant}/support-hook" in out
    assert f"+ create cron job {tenant}/support/morning-summary" in out
    assert "no API key is issued" in out
    assert "6 to create, 0 to update, 0 to delete." in out and "Applied." in out

    acme = Tenant.objects.get(slug=tenant)
    assert (acme.name, acme.max_concurrent_runs, acme.daily_token_budget) == ("Acme Inc", 5, 2000000)
    support = Agent.objects.get(tenant=acme, slug="support")
    assert support.system_prompt == "You answer support questions."
    assert support.tool_policy == {"allow": ["web_fetch", "cron"], "deny": ["exec"]}
    assert support.approval == {"mode": "on_miss", "allowlist": ["web_fetch"]}
    assert support.fallbacks == ["claude-test-fallback"] and support.max_tokens == 2048
    triage = Agent.objects.get(tenant=acme, slug="triage")
    assert triage.system_prompt == "You sort incoming requests.\nCosts: $5 per ticket, variables look like ${NAME}.\n"
    account = ChannelAccount.objects.get(tenant=acme, name="support-hook")
    assert account.secret == "hook-secret-1234" and account.config["callback_url"] == "https://example.com/replies"
    assert [(b.peer_id, b.agent.slug, b.priority) for b in Binding.objects.filter(account=account)] == [("vip-customer", "triage", 5)]
    morning = CronJob.objects.get(agent=support, name="morning-summary")
    assert morning.deliver == {"kind": "channel", "channel": account.pk, "to": "ops-room"}
    assert morning.next_run_at is not None, "the job is scheduled"
    assert PeriodicTask.objects.get(name=periodic_task_name(morning.pk)).enabled, "beat wakes it"
    heartbeat = CronJob.objects.get(agent=triage, name="heartbeat")
    assert (heartbeat.enabled, heartbeat.every_seconds, heartbeat.session_target) == (False, 5400, "isolated")
    assert heartbeat.deliver["secret"] == "heartbeat-secret"

    again, _ = run("apply_config", str(path))
    assert "No changes" in again and "Applied." not in again
    assert Agent.objects.get(pk=support.pk).updated_at == support.updated_at


def test_a_changed_field_is_planned_as_an_update_and_applied(tmp_path, secrets_env):
    tenant = slug()
    run("apply_config", str(write(tmp_path, full_config(tenant))))
    changed = full_config(tenant, prompt="You answer billing questions.").replace('expr: "0 9 * * 1-5"', 'expr: "30 8 * * *"')
    out, _ = run("apply_config", str(write(tmp_path, changed)))
    assert f'~ update agent {tenant}/support: system_prompt "You answer support questions." → "You answer billing questions."' in out
    assert f"~ update cron job {tenant}/support/morning-summary: schedule" in out
    assert "0 to create, 2 to update, 0 to delete." in out
    assert Agent.objects.get(tenant__slug=tenant, slug="support").system_prompt == "You answer billing questions."
    job = CronJob.objects.get(tenant__slug=tenant, name="morning-summary")
    assert job.expr == "30 8 * * *"
    task = PeriodicTask.objects.get(name=periodic_task_name(job.pk))
    assert (task.crontab.hour, task.crontab.minute, task.crontab.day_of_week) == ("8", "30", "*"), "beat follows"


def test_every_error_is_reported_with_its_line_and_path_and_nothing_is_applied(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    tenant = slug()
    path = write(tmp_path, f"""\
        tenants:
          {tenant}:
            status: sleeping
            agents:
              support:
                model: ""
                max_tokens: 0
                approval: {{mode: sometimes}}
                colour: blue
              ok-agent:
                model: claude-test-model
                system_prompt: "Hello ${{NOT_SET_ANYWHERE}}"
            channels:
              bot:
                kind: discord
                agent: nobody
                token: ${{NOT_SET_ANYWHERE}}
            cron_jobs:
              - name: nightly
                agent: support
                prompt: Go.
                schedule: {{kind: cron, expr: "61 * * * *"}}
        """)
    with pytest.raises(CommandError) as failed:
        run("apply_config", str(path))
    errors = failed.value.stderr
    assert "beamclaw.yaml:3 tenants.{0}.status: must be one of active, suspended".format(tenant) in errors
    assert f"beamclaw.yaml:6 tenants.{tenant}.agents.support.model: must be a non-empty string" in errors
    assert f"beamclaw.yaml:7 tenants.{tenant}.agents.support.max_tokens: must be a whole number from 1 to 200000" in errors
    assert f"beamclaw.yaml:8 tenants.{tenant}.agents.support.approval: mode must be one of off, on_miss, always." in errors
    assert f"beamclaw.yaml:9 tenants.{tenant}.agents.support.colour: unknown key" in errors
    assert f"beamclaw.yaml:12 tenants.{tenant}.agents.ok-agent.system_prompt: the environment variable NOT_SET_ANYWHERE is not set" in errors
    assert f"beamclaw.yaml:22 tenants.{tenant}.cron_jobs[0].schedule.expr: minute field: 61 is out of range 0-59." in errors
    # What only the database can tell is reported in the same run.
    assert f"beamclaw.yaml:16 tenants.{tenant}.channels.bot.agent: no agent 'nobody' in tenant '{tenant}'" in errors
    assert (f"beamclaw.yaml:17 tenants.{tenant}.channels.bot.token: the environment variable NOT_SET_ANYWHERE is not set, "
            "and there is no stored secret to keep") in errors
    assert "9 error(s); nothing was changed." in errors
    assert not Tenant.objects.filter(slug=tenant).exists()


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, secrets_env):
    tenant = slug()
    out, _ = run("apply_config", str(write(tmp_path, full_config(tenant))), "--dry-run")
    assert "(dry run: nothing changed)" in out and f"+ create agent {tenant}/support" in out
    assert not Tenant.objects.filter(slug=tenant).exists()


def test_prune_deletes_what_the_file_no_longer_names_and_only_with_prune(tmp_path, secrets_env):
    tenant = slug()
    run("apply_config", str(write(tmp_path, full_config(tenant))))
    job = CronJob.objects.get(tenant__slug=tenant, name="heartbeat")
    # The same tenant and support agent; triage, the channel and the jobs left out.
    path = write(tmp_path, full_config(tenant).split("              triage:")[0])

    out, _ = run("apply_config", str(path))
    assert "No changes" in out, "without --prune nothing is deleted"
    assert Agent.objects.filter(tenant__slug=tenant).count() == 2

    out, _ = run("apply_config", str(path), "--prune")
    assert f"- delete agent {tenant}/triage" in out and f"- delete channel {tenant}/support-hook" in out
    assert f"- delete cron job {tenant}/triage/heartbeat" in out and f"- delete cron job {tenant}/support/morning-summary" in out
    assert "0 to create, 0 to update, 4 to delete." in out
    assert list(Agent.objects.filter(tenant__slug=tenant).values_list("slug", flat=True)) == ["support"]
    assert not ChannelAccount.objects.filter(tenant__slug=tenant).exists()
    assert not CronJob.objects.filter(tenant__slug=tenant).exists()
    assert not PeriodicTask.objects.filter(name=periodic_task_name(job.pk)).exists(), "beat no longer wakes it"
    assert Tenant.objects.filter(slug=tenant).exists()


def test_export_then_apply_changes_nothing_and_writes_no_secret(tmp_path, secrets_env):
    tenant = slug()
    run("apply_config", str(write(tmp_path, full_config(tenant))))
    Agent.objects.filter(tenant__slug=tenant, slug="support").update(api_key="sk-agent-own-key-5678")
    exported = tmp_path / "exported.yaml"
    run("export_config", "--tenant", tenant, "-o", str(exported))
    text = exported.read_text()
    for secret in ("hook-secret-1234", "heartbeat-secret", "sk-agent-own-key-5678"):
        assert secret not in text
    assert "${BEAMCLAW_SECRET_" in text and "${NAME}" not in text.replace("$${NAME}", "")

    # The secrets' variables are not set here: the stored secrets stay, and the plan says so.
    for name in ("SUPPORT_HOOK_SECRET", "HEARTBEAT_SECRET"):
        secrets_env.delenv(name)
    out, _ = run("apply_config", str(exported))
    assert "No changes" in out, out
    assert f"channel {tenant}/support-hook: token kept as stored (BEAMCLAW_SECRET_" in out
    assert ChannelAccount.objects.get(tenant__slug=tenant).secret == "hook-secret-1234"
    assert Agent.objects.get(tenant__slug=tenant, slug="support").api_key == "sk-agent-own-key-5678"

    # Set, a reference replaces the secret.
    variable = f"BEAMCLAW_SECRET_{tenant.upper().replace('-', '_')}_CHANNEL_SUPPORT_HOOK_TOKEN"
    secrets_env.setenv(variable, "rotated-secret-9999")
    out, _ = run("apply_config", str(exported))
    assert f"~ update channel {tenant}/support-hook: token" in out and "rotated-secret-9999" not in out
    assert ChannelAccount.objects.get(tenant__slug=tenant).secret == "rotated-secret-9999"


def test_export_refuses_an_unknown_tenant():
    with pytest.raises(CommandError, match="no tenant 'no-such-tenant'"):
        run("export_config", "--tenant", "no-such-tenant")


@pytest.fixture
def example_tenant_removed():
    """The example names its tenant `acme`: gone afterwards, so later tests (doctor's check of every bot token)
    do not meet its made-up Discord token."""
    yield
    Tenant.objects.filter(slug="acme").delete()


def test_the_example_file_applies_cleanly(secrets_env, tmp_path, example_tenant_removed):
    for name in ("ACME_DISCORD_TOKEN", "ACME_WEBHOOK_SECRET", "ACME_REPORT_SECRET"):
        secrets_env.setenv(name, f"{name.lower()}-value")
    example = ROOT / "docs" / "beamclaw.example.yaml"
    out, _ = run("apply_config", str(example))
    assert "Applied." in out or "No changes" in out
    again, _ = run("apply_config", str(example))
    assert "No changes" in again

    # Its export (Discord settings, bindings, both kinds of delivery) applies as no change, secrets unset.
    text, _ = run("export_config", "--tenant", "acme")
    for name in ("ACME_DISCORD_TOKEN", "ACME_WEBHOOK_SECRET", "ACME_REPORT_SECRET"):
        secrets_env.delenv(name)
    path = write(tmp_path, text, "exported.yaml")
    out, _ = run("apply_config", str(path))
    assert "No changes" in out, out
