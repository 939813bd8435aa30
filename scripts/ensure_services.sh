#!/usr/bin/env bash
# `make run` and `make test`: make sure PostgreSQL answers at DATABASE_URL and Redis at REDIS_URL.
#
# For a server on this machine (the defaults are: postgres:///beamclaw, the local socket as the current OS
# user; redis://127.0.0.1:6379/0) it does what it can:
# - starts one that is installed but stopped;
# - installs one that is missing (Debian/Ubuntu packages postgresql, redis-server) when it may: root or
#   passwordless sudo, and apt-get (as ensure_sandbox_tools.sh does for bubblewrap);
# - gives the current OS user a PostgreSQL role that may create databases when the server has none for it
#   (a fresh install only knows `postgres`), so `manage.py ensure_database` can create the database;
#   only for a URL without a user or password, which logs in over the local socket as this OS user.
# Whatever it cannot do it prints as the exact commands to run, and exits non-zero. A server on another
# host is only checked.
#
# BEAMCLAW_SERVICES_DRY_RUN=1 prints the commands that would change this machine instead of running them.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
ROOT="$(cd "${0%/*}/.." && pwd)"
PY="$ROOT/.venv/bin/python"
exec 3>&1  # run() reports on the original stdout even where the command's own output is silenced
DRY_RUN="${BEAMCLAW_SERVICES_DRY_RUN:-0}"
[ -x "$PY" ] || { echo "services: $PY is missing; run 'make install' first." >&2; exit 1; }

ME="$(id -un)"
CAN_ADMIN=1
if [ "$EUID" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  SUDO=() CAN_ADMIN=0
fi
SYSTEMD=0
[ -d /run/systemd/system ] && command -v systemctl >/dev/null && SYSTEMD=1
todo=()  # commands the operator must run, printed at the end

run() {  # a command that changes the machine
  if [ "$DRY_RUN" = 1 ]; then { printf 'services: would run:'; printf ' %q' "$@"; echo; } >&3; else "$@"; fi
}

# "<local|remote> <peer|login> <port> <up|down|no-role|error> [detail]" for DATABASE_URL's server (not its
# database, which ensure_database creates: like it, this connects to the `postgres` database). `peer`: no
# user or password over the local socket, so the login is the OS user's.
pg_probe() {
  "$PY" - <<'PY'
import os

import dj_database_url
import psycopg

db = dj_database_url.parse(os.environ.get("DATABASE_URL", "postgres:///beamclaw"))
host = db.get("HOST") or ""
socket = host == "" or host.startswith("/")
where = "local" if socket or host in ("localhost", "127.0.0.1", "::1") else "remote"
auth = "peer" if socket and not db.get("USER") and not db.get("PASSWORD") else "login"
params = {k: v for k, v in {"host": host, "port": db.get("PORT"), "user": db.get("USER"), "password": db.get("PASSWORD")}.items() if v}
try:
    psycopg.connect(dbname="postgres", connect_timeout=3, **params).close()
    state = "up"
except psycopg.OperationalError as exc:
    text = " ".join(str(exc).split())
    if "role" in text and "does not exist" in text:
        state = "no-role"
    elif any(s in text for s in ("Connection refused", "No such file or directory", "timeout expired", "could not translate")):
        state = "down " + text
    else:
        state = "error " + text
print(where, auth, db.get("PORT") or 5432, state)
PY
}

# "<local|remote> <port> <up|down>" for REDIS_URL.
redis_probe() {
  "$PY" - <<'PY'
import os
from urllib.parse import urlsplit

import redis

url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
parts = urlsplit(url)
where = "local" if parts.scheme == "unix" or parts.hostname in ("localhost", "127.0.0.1", "::1") else "remote"
try:
    redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    state = "up"
except redis.RedisError:
    state = "down"
print(where, parts.port or 6379, state)
PY
}

probe() {
  read -r PG_WHERE PG_AUTH PG_PORT PG_STATE PG_DETAIL <<<"$(pg_probe)"
  read -r REDIS_WHERE REDIS_PORT REDIS_STATE <<<"$(redis_probe)"
}

pg_answers() { local state; read -r _ _ _ state _ <<<"$(pg_probe)"; [ "$state" != down ]; }
redis_answers() { local state; read -r _ _ state <<<"$(redis_probe)"; [ "$state" = up ]; }
wait_for() {  # up to 15 s
  for _ in $(seq 1 30); do "$1" && return 0; sleep 0.5; done
  return 1
}

pg_installed() { command -v pg_lsclusters >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; }
pg_cluster() {  # "<version> <name>" of the local cluster on DATABASE_URL's port, once the server is installed
  command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port {print $1, $2; exit}'
}

probe

# 1. Install what is missing on this machine, in one apt-get call.
missing=()
[ "$PG_WHERE" = local ] && [ "$PG_STATE" = down ] && ! pg_installed && missing+=(postgresql)
[ "$REDIS_WHERE" = local ] && [ "$REDIS_STATE" = down ] && ! command -v redis-server >/dev/null && missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$CAN_ADMIN" = 1 ] && command -v apt-get >/dev/null; then
    echo "services: installing ${missing[*]}"
    apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)  # through env: sudo drops the caller's
    run "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || { run "${apt[@]}" update -qq >/dev/null && run "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
      || echo "services: could not install ${missing[*]} with apt-get" >&2
    [ "$DRY_RUN" = 1 ] || probe  # the packages' own scripts start them where an init system runs
  elif command -v apt-get >/dev/null; then
    todo+=("sudo apt-get install -y ${missing[*]}")
  else
    todo+=("install ${missing[*]/redis-server/redis} with this system's package manager (PostgreSQL 14 or later, Redis 6 or later)")
  fi
fi

# 2. Start what is installed but stopped.
if [ "$PG_WHERE" = local ] && [ "$PG_STATE" = down ] && [ -n "$(pg_cluster)" ]; then
  read -r PG_VERSION PG_CLUSTER <<<"$(pg_cluster)"
  if [ "$SYSTEMD" = 1 ]; then
    start=(systemctl start "postgresql@$PG_VERSION-$PG_CLUSTER")
  else
    start=(pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start)
  fi
  if [ "$CAN_ADMIN" = 1 ]; then
    echo "services: starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    run "${SUDO[@]}" "${start[@]}" || true
    [ "$DRY_RUN" = 1 ] || wait_for pg_answers || true
  else
    todo+=("sudo ${start[*]}")
  fi
elif [ "$PG_WHERE" = local ] && [ "$PG_STATE" = down ] && pg_installed; then
  todo+=("no local PostgreSQL cluster is on port $PG_PORT (see pg_lsclusters): set that port in DATABASE_URL, or create one: sudo pg_createcluster --port $PG_PORT --start <version> main")
elif [ "$PG_WHERE" = local ] && [ "$PG_STATE" = down ] && [ "$DRY_RUN" = 1 ] && [[ " ${missing[*]} " == *" postgresql "* ]]; then
  echo "services: then start PostgreSQL, if its package did not"
fi
if [ "$REDIS_WHERE" = local ] && [ "$REDIS_STATE" = down ] && command -v redis-server >/dev/null; then
  echo "services: starting Redis on port $REDIS_PORT"
  # Nothing on disk: Redis holds only what can be rebuilt (docs/operations.md), so a restart may empty it.
  run redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null || true
  [ "$DRY_RUN" = 1 ] || wait_for redis_answers || true
fi
[ "$DRY_RUN" = 1 ] || probe

# 3. A role for this OS user, so that the socket login of the default DATABASE_URL is accepted.
if [ "$PG_WHERE" = local ] && [ "$PG_STATE" = no-role ]; then
  if [ "$PG_AUTH" != peer ]; then
    todo+=("sudo -u postgres createuser --createdb --pwprompt <the user named in DATABASE_URL>")
  elif [ "$CAN_ADMIN" = 1 ]; then
    echo "services: creating the PostgreSQL role $ME (it may create databases)"
    if [ "$EUID" -eq 0 ]; then as_postgres=(runuser -u postgres --); else as_postgres=(sudo -n -u postgres); fi
    # From /: the postgres user may not be allowed into the project directory.
    (cd / && run "${as_postgres[@]}" createuser --port "$PG_PORT" --createdb "$ME") || true
    [ "$DRY_RUN" = 1 ] || probe
  else
    todo+=("sudo -u postgres createuser --createdb $ME")
  fi
fi

if [ "$DRY_RUN" = 1 ]; then
  for step in "${todo[@]}"; do echo "services: to run yourself: $step"; done
  echo "services: dry run, nothing was changed"
  exit 0
fi

if [ ${#todo[@]} -gt 0 ] || [ "$PG_STATE" != up ] || [ "$REDIS_STATE" != up ]; then
  {
    case "$PG_STATE" in
      up) ;;
      no-role) echo "PostgreSQL at DATABASE_URL (${DATABASE_URL:-postgres:///beamclaw}) has no role for this login." ;;
      *) echo "PostgreSQL is not usable at DATABASE_URL (${DATABASE_URL:-postgres:///beamclaw}): $PG_DETAIL" ;;
    esac
    [ "$REDIS_STATE" = up ] || echo "Redis is not reachable at REDIS_URL (${REDIS_URL:-redis://127.0.0.1:6379/0})."
    if [ ${#todo[@]} -gt 0 ]; then
      echo "To set them up on this machine, run:"
      for step in "${todo[@]}"; do echo "  $step"; done
      echo "then 'make run' again."
    fi
    echo "Or set DATABASE_URL / REDIS_URL to servers you already have."
  } >&2
  exit 1
fi
