#!/usr/bin/env bash
# `make run`: make sure a demo tenant exists, print how to reach everything, then run every process of
# the Procfile in the foreground (Ctrl-C stops them all, also when the output is piped: scripts/procs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .run
PORT="${PORT:-8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
export PORT FLOWER_PORT

# The demo tenant's key is shown once at creation, so keep it for the next `make run`.
if [ -s .run/demo.json ] && python manage.py api_key_valid "$(python -c 'import json;print(json.load(open(".run/demo.json"))["api_key"])')" 2>/dev/null; then
  :
else
  python manage.py create_tenant demo --exists-ok > .run/demo.json
fi
API_KEY=$(python -c 'import json;print(json.load(open(".run/demo.json"))["api_key"])')
AGENT=$(python -c 'import json;print(json.load(open(".run/demo.json"))["agent"])')
# Without a key the demo agent talks to the bundled fake (below), and its model is named for it ("fake-echo");
# with a key it gets the real default back. An operator's own choice of model is left alone either way.
if [ -z "${ANTHROPIC_API_KEY:-}" ]; then MODEL_BACKEND=fake; else MODEL_BACKEND=anthropic; fi
MODEL=$(python manage.py create_tenant demo --agent "$AGENT" --model-backend "$MODEL_BACKEND" \
  | python -c 'import json,sys;print(json.load(sys.stdin)["model"])')
ADMIN_PASSWORD=$(python manage.py ensure_admin_user --username admin --password-file .run/admin-password)
# Flower can revoke tasks and shut workers down: it always asks for a password, made once and kept
# (unless FLOWER_BASIC_AUTH=user:password is already set).
if [ -n "${FLOWER_BASIC_AUTH:-}" ]; then
  FLOWER_LOGIN="as set in FLOWER_BASIC_AUTH"
else
  if [ ! -s .run/flower-password ]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(18))' > .run/flower-password)
  fi
  export FLOWER_BASIC_AUTH="admin:$(cat .run/flower-password)"
  FLOWER_LOGIN="user: admin, password: $(cat .run/flower-password)"
fi

cp Procfile .run/Procfile
# A worker's threads share one interpreter, so one worker process uses at most one core: one per core, up to two
# by default (each keeps up to 16 PostgreSQL connections); WORKERS=N chooses. Each needs its own node name.
WORKERS="${WORKERS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}"
case "$WORKERS" in
  ''|*[!0-9]*|0) echo "WORKERS must be a whole number of worker processes, 1 or more (got '$WORKERS')." >&2; exit 2 ;;
esac
for n in $(seq 2 "$WORKERS"); do
  echo "worker${n}: python manage.py worker -n worker${n}@%h" >> .run/Procfile
done
LLM_NOTE="Claude via the Anthropic API"
if [ -z "${ANTHROPIC_API_KEY:-}" ]; then
  # No key: run the bundled fake model server (it echoes), so the whole gateway can still be tried.
  FAKE_PORT="${FAKE_LLM_PORT:-8765}"
  echo "fake-llm: python -m tests.fakes.anthropic_server --port ${FAKE_PORT}" >> .run/Procfile
  export ANTHROPIC_BASE_URL="http://127.0.0.1:${FAKE_PORT}" ANTHROPIC_API_KEY="fake-local-key"
  LLM_NOTE="the bundled FAKE model (it echoes; set ANTHROPIC_API_KEY to talk to Claude)"
fi

if [ -n "${BEAMCLAW_METRICS_TOKEN:-}" ]; then
  METRICS_NOTE="bearer token from BEAMCLAW_METRICS_TOKEN"
else
  METRICS_NOTE="from this machine only; set BEAMCLAW_METRICS_TOKEN to scrape from elsewhere"
fi
cat <<INFO

BeamClaw is starting.
  Dashboard:                   http://127.0.0.1:${PORT}/   (user: admin, password: ${ADMIN_PASSWORD})
  Gateway (OpenAI-compatible): http://127.0.0.1:${PORT}/v1
  Health:                      http://127.0.0.1:${PORT}/health
  Metrics (Prometheus):        http://127.0.0.1:${PORT}/metrics   (${METRICS_NOTE})
  Django admin:                http://127.0.0.1:${PORT}/admin/   (same user)
  Flower:                      http://127.0.0.1:${FLOWER_PORT}/   (${FLOWER_LOGIN})
  Worker processes: ${WORKERS} (WORKERS=N make run to choose)
  Tenant: demo   Agent: ${AGENT}   Model: ${MODEL}   Model backend: ${LLM_NOTE}
  API key: ${API_KEY}

Try it:
  .venv/bin/python manage.py chat --tenant demo --agent ${AGENT}     # a terminal chat
  curl http://127.0.0.1:${PORT}/v1/chat/completions -H "Authorization: Bearer ${API_KEY}" \\
       -H 'Content-Type: application/json' -d '{"model": "${AGENT}", "messages": [{"role": "user", "content": "Hello"}]}'

INFO
# Metric files of the last run's processes (docs/metrics.md): counters start from zero with the processes.
METRICS_DIR="${PROMETHEUS_MULTIPROC_DIR:-.run/metrics}"
mkdir -p "$METRICS_DIR" && find "$METRICS_DIR" -maxdepth 1 -name '*.db' -delete
exec python scripts/procs.py -f .run/Procfile -d . start
