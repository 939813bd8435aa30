"""Logs are one JSON object per line in every process (LOG_FORMAT=json, the default), start-up lines
included, and carry the tenant, session and run a line is about; LOG_FORMAT=plain is for people."""

import json
import subprocess
import sys
import uuid

import pytest

from sessions.models import Run
from tests.conftest import ROOT, openai_client, start_daphne, wait_until
from tests.procs import Process

LOGGING_SNIPPET = """
import logging
from beamclaw_project.infra.log_context import log_context_bind
log_context_bind(tenant="acme", session="s-1", run="r-1")
try:
    {}["missing"]
except KeyError:
    logging.getLogger("beamclaw.check").exception("lookup failed\\nsecond line")
"""


def json_lines(path) -> list[dict]:
    """Every line of a log file as JSON; fails on the first line that is not one object."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


def manage_shell(env: dict, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_web_and_worker_write_json_lines_with_the_ids_of_a_run(fleet, service_env, log_dir, tenant):
    # Processes of this test's own, so their log files hold their start-up lines and nothing older.
    worker = fleet(f"json-worker-{uuid.uuid4().hex[:4]}")
    web, url = start_daphne(f"json-web-{uuid.uuid4().hex[:4]}", service_env, log_dir)
    try:
        openai_client(url, tenant).chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Log this, please."}]
        )
        run = Run.objects.get(tenant=tenant.tenant)
        ids = {"tenant": tenant.tenant.slug, "session": str(run.session_id), "run": str(run.pk)}
        web_lines = json_lines(web.log_path)
        assert any(line["message"] == "run started (openai)" and line.items() >= ids.items() for line in web_lines)
        # Daphne logs a request once its reply has gone out, which the client may see first.
        wait_until(lambda: any(line["logger"] == "daphne.access" and "POST /v1/chat/completions" in line["message"]
                               for line in json_lines(web.log_path)),
                   timeout=10, message="Daphne's access line for the request")
        # The run's end is logged before it is announced, so the line is there once the reply is.
        worker_lines = json_lines(worker.log_path)
        assert any(line["message"] == "run succeeded" and line.items() >= ids.items() for line in worker_lines)
        # Not Celery's own line for each task it receives: the run's lines say what happened.
        assert not [line for line in worker_lines if line["logger"] == "celery.worker.strategy"]
        # Celery's start-up banner and its "ready" line are JSON lines too.
        assert any(" starting\n" in line["message"] and "[queues]" in line["message"] for line in worker_lines)
        assert any(line["message"].endswith(" ready.") for line in worker_lines)
    finally:
        web.stop()


@pytest.mark.usefixtures("fleet")  # this test's worker takes the shared one's place
def test_log_level_warning_leaves_a_runs_info_lines_out_of_web_and_worker(workers, service_env, log_dir, tenant):
    quiet = {**service_env, "LOG_LEVEL": "WARNING"}
    name = f"quiet-worker-{uuid.uuid4().hex[:4]}"
    # As the Procfile starts it, with no -l of its own: LOG_LEVEL is the worker's level too.
    worker = Process(name, [sys.executable, "manage.py", "worker", "-c", "8", "-n", f"{name}@%h"], quiet, log_dir).start()
    web, url = start_daphne(f"quiet-web-{uuid.uuid4().hex[:4]}", quiet, log_dir)
    try:
        workers.wait_ready(name)
        reply = openai_client(url, tenant).chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Log nothing, please."}]
        )
        assert reply.choices[0].message.content
        # Both lines are written before the reply goes out ("run started" by the web, "run succeeded" by the
        # worker before it announces the end): at INFO they would be there by now.
        for proc in (web, worker):
            assert [line for line in json_lines(proc.log_path) if line["level"] == "INFO"] == []
    finally:
        web.stop()
        worker.stop()


def test_beat_writes_json_lines(service_env, log_dir, tmp_path):
    name = f"json-beat-{uuid.uuid4().hex[:4]}"
    argv = [sys.executable, "-m", "celery", "-A", "beamclaw_project", "--quiet", "beat", "-l", "INFO",
            "-S", "cron.scheduler:CronScheduler", "--schedule", str(tmp_path / "schedule"), "--pidfile", str(tmp_path / "pid")]
    beat = Process(name, argv, service_env, log_dir).start()
    try:
        wait_until(lambda: beat.log_path.exists() and "Starting" in beat.log_path.read_text(), timeout=30,
                   message="beat to start")
    finally:
        beat.stop()
    assert any(line["message"].startswith("beat: Starting") for line in json_lines(beat.log_path))


def test_a_command_logs_the_bound_ids_and_the_exception_as_one_json_line(service_env):
    result = manage_shell(service_env, LOGGING_SNIPPET)
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(text) for text in result.stderr.splitlines()]
    assert line["logger"] == "beamclaw.check" and line["level"] == "ERROR"
    assert line["message"] == "lookup failed\nsecond line"
    assert (line["tenant"], line["session"], line["run"]) == ("acme", "s-1", "r-1")
    assert "KeyError: 'missing'" in line["exception"]


def test_plain_format_for_people_and_a_clear_error_for_an_unknown_one(service_env):
    plain = manage_shell({**service_env, "LOG_FORMAT": "plain"}, LOGGING_SNIPPET)
    assert plain.returncode == 0, plain.stderr
    assert " ERROR beamclaw.check [tenant=acme session=s-1 run=r-1] lookup failed" in plain.stderr
    assert "Traceback" in plain.stderr

    wrong = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env={**service_env, "LOG_FORMAT": "yaml"},
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0
    assert "LOG_FORMAT='yaml' is not a log format: use json" in wrong.stderr

