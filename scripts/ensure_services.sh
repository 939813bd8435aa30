#!/usr/bin/env bash
# Make sure Postgres and Redis answer; start the local ones if they are installed but stopped.
set -u
pg_up() { pg_isready -q -h "${PGHOST:-127.0.0.1}" -p "${PGPORT:-5432}" 2>/dev/null; }
redis_up() { "$(dirname "$0")/../.venv/bin/python" -c "import os,redis; redis.Redis.from_url(os.environ.get('REDIS_URL','redis://127.0.0.1:6379/0'), socket_connect_timeout=2).ping()" 2>/dev/null; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "Starting PostgreSQL..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 0.5; done
  fi
  pg_up || { echo "PostgreSQL is not reachable. Start it, or set DATABASE_URL to a reachable server (docker compose up postgres)." >&2; exit 1; }
fi

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "Starting Redis..."
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no || true
    for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
  fi
  redis_up || { echo "Redis is not reachable. Start it, or set REDIS_URL to a reachable server (docker compose up redis)." >&2; exit 1; }
fi
