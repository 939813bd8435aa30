"""The finer rules of beamclaw.yaml (docs/config.md): YAML pitfalls, schedules that must not drift on
re-apply, kinds that cannot change, and webhook headers as secrets."""

from datetime import timedelta

import pytest
from django.core.management import CommandError
from django.utils import timezone

from cron.models import CronJob
from tenants.models import Agent
from tests.tenants.test_config_file import run, slug, write


def refused(path) -> str:
    with pytest.raises(CommandError) as failed:
        run("apply_config", str(path))
    return failed.value.stderr


def test_yaml_pitfalls_are_errors_or_read_as_written(tmp_path):
    tenant = slug()
    broken = write(tmp_path, f"tenants:\n  {tenant}:\n    agents: [unclosed\n")
    assert "beamclaw.yaml:4: not valid YAML" in refused(broken)

    twice = write(tmp_path, f"""\
        tenants:
          {tenant}:
            agents:
              a: {{model: m1}}
              a: {{model: m2}}
        """)
    assert f"beamclaw.yaml:4 tenants.{tenant}.agents.a: given twice (again on line 5)" in refused(twice)

    # `off` is a string (YAML 1.2 booleans), as the approval mode needs.
    ok = write(tmp_path, f"""\
        tenants:
          {tenant}:
            agents:
              a:
                model: m1
                approval: {{mode: off, allowlist: []}}
                system_prompt: yes
        """)
    run("apply_config", str(ok))
    agent = Agent.objects.get(tenant__slug=tenant, slug="a")
    assert agent.approval == {"mode": "off", "allowlist": []} and agent.system_prompt == "yes"


def cron_file(tenant: str, schedule: str, *, enabled: str = "true") -> str:
    return f"""\
        tenants:
          {tenant}:
            agents:
              ops: {{model: m1}}
            cron_jobs:
              - name: job
                agent: ops
                prompt: Go.
                schedule: {schedule}
                enabled: {enabled}
        """


def test_schedules_do_not_move_when_the_file_is_applied_again(tmp_path):
    tenant = slug()
    relative = write(tmp_path, cron_file(tenant, "{kind: at, at: 20m}"))
    assert "schedule.at: give an ISO 8601 instant" in refused(relative)

    path = write(tmp_path, cron_file(tenant, "{kind: every, every: 1h}"))
    run("apply_config", str(path))
    anchor = CronJob.objects.get(tenant__slug=tenant).anchor
    assert "No changes" in run("apply_config", str(path))[0], "without an anchor the job keeps its grid"
    assert CronJob.objects.get(tenant__slug=tenant).anchor == anchor

    out, _ = run("apply_config", str(write(tmp_path, cron_file(tenant, "{kind: every, every: 2h}"))))
    assert f"~ update cron job {tenant}/ops/job: schedule" in out
    job = CronJob.objects.get(tenant__slug=tenant)
    assert (job.every_seconds, job.anchor) == (7200, anchor)


def test_an_at_job_that_ran_is_done_and_a_past_instant_is_refused_for_a_new_one(tmp_path):
    tenant = slug()
    soon = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    path = write(tmp_path, cron_file(tenant, f'{{kind: at, at: "{soon.isoformat()}"}}'))
    run("apply_config", str(path))
    # As if it ran: the instant passed and the job disabled itself.
    past = soon - timedelta(days=1)
    CronJob.objects.filter(tenant__slug=tenant).update(at=past, enabled=False)
    ran = write(tmp_path, cron_file(tenant, f'{{kind: at, at: "{past.isoformat()}"}}'))
    assert "No changes" in run("apply_config", str(ran))[0]

    other = slug()
    late = write(tmp_path, cron_file(other, f'{{kind: at, at: "{past.isoformat()}"}}'))
    assert f"tenants.{other}.cron_jobs[0].schedule: 'at' {past.isoformat().replace('+00:00', 'Z')} has passed" in refused(late)


def test_a_channel_kind_cannot_change(tmp_path, monkeypatch):
    monkeypatch.setenv("CFG_CHANNEL_SECRET", "a-signing-secret")
    tenant = slug()
    channel = """\
        tenants:
          {tenant}:
            agents:
              a: {{model: m1}}
            channels:
              front:
                kind: {kind}
                agent: a
                token: ${{CFG_CHANNEL_SECRET}}
        """
    run("apply_config", str(write(tmp_path, channel.format(tenant=tenant, kind="webhook"))))
    errors = refused(write(tmp_path, channel.format(tenant=tenant, kind="discord")))
    assert f"beamclaw.yaml:7 tenants.{tenant}.channels.front.kind: a channel's kind cannot change (webhook → discord)" in errors


def test_webhook_header_values_are_secrets_kept_when_their_variable_is_unset(tmp_path, monkeypatch):
    tenant = slug()
    monkeypatch.setenv("CFG_HOOK_TOKEN", "Bearer first")
    text = cron_file(tenant, '"@daily"').replace(
        "enabled: true", "deliver: {kind: webhook, url: https://example.com/in, headers: {Authorization: \"${CFG_HOOK_TOKEN}\"}}"
    )
    path = write(tmp_path, text)
    run("apply_config", str(path))
    assert CronJob.objects.get(tenant__slug=tenant).deliver["headers"] == {"Authorization": "Bearer first"}

    monkeypatch.delenv("CFG_HOOK_TOKEN")
    out, _ = run("apply_config", str(path))
    assert "No changes" in out and f"cron job {tenant}/ops/job: deliver.headers.Authorization kept as stored" in out
    assert CronJob.objects.get(tenant__slug=tenant).deliver["headers"] == {"Authorization": "Bearer first"}
