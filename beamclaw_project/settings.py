"""Settings, read from the environment only (12-factor), with defaults that work on a laptop."""

import ipaddress
import logging
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from beamclaw_project.postgres.connection import Connection as PipelinedBeginConnection

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


DEBUG = env_bool("DEBUG", False)
# A fixed development key keeps `make run` zero-config; production must set SECRET_KEY.
SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-insecure-secret-key-change-me")
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "*").split(",") if h.strip()]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "tenants",
    "sessions.apps.AgentSessionsConfig",
    "tools",
    "cron",
    "channels_app",
    # The operators' web dashboard at `/` (beamclaw_project/dashboard/; docs/dashboard.md).
    "beamclaw_project.dashboard",
    # Last: loads BEAMCLAW_PLUGINS once every app above is ready (beamclaw_project/apps.py).
    "beamclaw_project.apps.BeamclawConfig",
]

MIDDLEWARE = [
    "beamclaw_project.middleware.OutageMiddleware",
    "beamclaw_project.middleware.RequestBodyLimitMiddleware",
    "beamclaw_project.middleware.RejectNulMiddleware",
    "beamclaw_project.middleware.ApiFastPathMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "beamclaw_project.urls"
ASGI_APPLICATION = "beamclaw_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL", "postgres:///beamclaw"))}
# Django's psycopg pool: web and worker threads borrow a connection per unit of work and give it back,
# so hundreds of streaming runs share a handful of Postgres connections.
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
DATABASES["default"]["OPTIONS"]["pool"] = {
    "min_size": 1,
    "max_size": env_int("DB_POOL_MAX_SIZE", 16),
    # While PostgreSQL is down the pool cannot make connections and a borrower waits this long: short,
    # so that requests get their 503 (and workers pause their steps) promptly.
    "timeout": env_int("DB_POOL_TIMEOUT_SECONDS", 5),
    # BEGIN goes in the same round trip as a transaction's first statements (postgres/connection.py).
    "connection_class": PipelinedBeginConnection,
}
# Django's backend, with a check of each pooled connection before it is lent: after PostgreSQL restarts,
# every idle connection in the pool is dead, and without the check each would fail one request. This one
# costs a round trip only for a connection the server wrote to while it sat idle (postgres/base.py);
# Django's own (CONN_HEALTH_CHECKS) sends one at every borrow.
DATABASES["default"]["ENGINE"] = "beamclaw_project.postgres"
# Django turns psycopg's prepared statements off (None) for PgBouncer's sake. Only the hand-written hot
# queries are prepared (infra/rows.py: server-side binding, prepare=True); Django's own cursors bind
# client-side and are never prepared, whatever this says.
DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 5

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Request body limits: BEAMCLAW["MESSAGE_BODY_MAX_BYTES"] and ["REQUEST_BODY_MAX_BYTES"] below, enforced
# by beamclaw_project.middleware.RequestBodyLimitMiddleware; Django's DATA_UPLOAD_MAX_MEMORY_SIZE follows them.

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        # channels_redis, with receive() retrying through a Redis restart (infra/channel_layer.py).
        "BACKEND": "beamclaw_project.infra.channel_layer.ResilientRedisChannelLayer",
        # redis-py's 5 s default read timeout would cut the layer's own 5 s blocking pops short.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.api_auth.ApiKeyAuthentication"],
    # An authenticated key whose scopes cover the request (tenants/scopes.py has the table).
    "DEFAULT_PERMISSION_CLASSES": ["tenants.api_auth.HasKeyScope"],
    # One error shape for every REST view: {"detail", "code", <field>: [...]} (docs/gateway.md).
    "EXCEPTION_HANDLER": "beamclaw_project.api_errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["beamclaw_project.json_input.JSONParser"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "BeamClaw API",
    "DESCRIPTION": "Multi-tenant AI agent gateway",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's assets come from the sidecar package, so /api/docs/ works without internet access.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"QueueModeEnum": "sessions.models.AgentSession.QueueMode",
                            "ChannelAccountKindEnum": "channels_app.models.ChannelAccount.Kind",
                            "ChannelAccountStatusEnum": "channels_app.models.ChannelAccount.Status"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "sessions.schema.add_run_events_path",
        "sessions.openai_schema.add_openai_paths",
    ],
}

# --- Celery -------------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
# kombu's Redis transport with a fix that lets workers reconnect after Redis restarts (infra/broker.py).
CELERY_BROKER_TRANSPORT = "beamclaw_project.infra.broker:Transport"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1)
CELERY_TASK_DEFAULT_QUEUE = "system"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Off by default: they cost every task a few percent, and Flower switches them on while it runs.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", False)
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Workers log through LOGGING above (with tenant/session/run ids), not Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Redelivery of an unacknowledged task after a crash; longer than any step. Crashed runs are picked
# up much sooner by the run lease reaper (see sessions/runs/housekeeping.py), so this is only the last resort.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# --- BeamClaw -----------------------------------------------------------------------------------
BEAMCLAW = {
    "DEFAULT_MODEL": os.environ.get("BEAMCLAW_DEFAULT_MODEL", "claude-sonnet-4-5"),
    "DEFAULT_MAX_TOKENS": env_int("BEAMCLAW_DEFAULT_MAX_TOKENS", 8192),
    "STEP_CAP": env_int("BEAMCLAW_STEP_CAP", 25),
    # Sub-agents of one session with a queued or active run (docs/subagents.md).
    "SUBAGENTS_MAX_RUNNING": env_int("BEAMCLAW_SUBAGENTS_MAX_RUNNING", 5),
    # Compaction defaults for agents that do not set their own (docs/compaction.md).
    "COMPACTION_THRESHOLD_TOKENS": env_int("BEAMCLAW_COMPACTION_THRESHOLD_TOKENS", 150000),
    "COMPACTION_KEEP_RECENT_TOKENS": env_int("BEAMCLAW_COMPACTION_KEEP_RECENT_TOKENS", 20000),
    # A running step holds a lease in Redis; a run whose lease lapsed was orphaned by a dead worker.
    "RUN_LEASE_SECONDS": env_float("BEAMCLAW_RUN_LEASE_SECONDS", 30.0),
    "HOUSEKEEPING_SECONDS": env_float("BEAMCLAW_HOUSEKEEPING_SECONDS", 5.0),
    # While a monitor (Flower) asks for task events, a worker publishes them in a batch this often (docs/scaling.md).
    "TASK_EVENTS_FLUSH_SECONDS": env_float("BEAMCLAW_TASK_EVENTS_FLUSH_SECONDS", 0.5),
    "EVENT_STREAM_TTL_SECONDS": env_int("BEAMCLAW_EVENT_STREAM_TTL_SECONDS", 3600),
    "PROVIDER_MAX_RETRIES": env_int("BEAMCLAW_PROVIDER_MAX_RETRIES", 3),
    "PROVIDER_RETRY_BASE_SECONDS": env_float("BEAMCLAW_PROVIDER_RETRY_BASE_SECONDS", 0.5),
    "PROVIDER_TIMEOUT_SECONDS": env_float("BEAMCLAW_PROVIDER_TIMEOUT_SECONDS", 600.0),
    # Modules that register more providers, tools or channel transports (beamclaw_project/apps.py).
    "PLUGINS": [m.strip() for m in os.environ.get("BEAMCLAW_PLUGINS", "").split(",") if m.strip()],
    "WORKER_CONCURRENCY": env_int("BEAMCLAW_WORKER_CONCURRENCY", 200),
    # Requests per minute per API key unless the key sets its own; 0 turns the limit off.
    "RATE_LIMIT_PER_MINUTE": env_int("BEAMCLAW_RATE_LIMIT_PER_MINUTE", 600),
    # How long an HTTP request waits for a run's next event before giving up on the run.
    "RUN_WAIT_TIMEOUT_SECONDS": env_float("BEAMCLAW_RUN_WAIT_TIMEOUT_SECONDS", 600.0),
    # After SIGTERM, how long `web` lets open OpenAI streams run to their end before it tells the rest to
    # come back later and exits (docs/operations.md). Below Docker Compose's default 10 s stop grace.
    "WEB_DRAIN_SECONDS": env_float("BEAMCLAW_WEB_DRAIN_SECONDS", 8.0),
    # --- images in messages (sessions/content.py, sessions/images.py; docs/images.md) ---
    # Decoded bytes of one image. Anthropic refuses an image whose base64 is over 5 MiB: 3.75 MiB of image.
    "IMAGE_MAX_BYTES": env_int("BEAMCLAW_IMAGE_MAX_BYTES", 3_932_160),
    "IMAGE_MAX_PER_MESSAGE": env_int("BEAMCLAW_IMAGE_MAX_PER_MESSAGE", 8),
    # Images linked by URL, fetched by the gateway under the outbound address policy (BEAMCLAW_OUTBOUND).
    "IMAGE_URLS_MAX_PER_REQUEST": env_int("BEAMCLAW_IMAGE_URLS_MAX_PER_REQUEST", 16),
    "IMAGE_FETCH_TIMEOUT_SECONDS": env_float("BEAMCLAW_IMAGE_FETCH_TIMEOUT_SECONDS", 15.0),
    "IMAGE_FETCH_MAX_REDIRECTS": env_int("BEAMCLAW_IMAGE_FETCH_MAX_REDIRECTS", 3),
    # Request bodies, refused with 413 above these: the routes that take a message (POST /v1/chat/completions,
    # /v1/responses, /api/sessions/{id}/messages/), whose inline images need the room, and every other request.
    "MESSAGE_BODY_MAX_BYTES": env_int("BEAMCLAW_MESSAGE_BODY_MAX_BYTES", 20 * 1024 * 1024),
    "REQUEST_BODY_MAX_BYTES": env_int("BEAMCLAW_REQUEST_BODY_MAX_BYTES", 2 * 1024 * 1024),
}
# Django's own ceiling on a body read into memory: the largest that any route takes.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(BEAMCLAW["MESSAGE_BODY_MAX_BYTES"], BEAMCLAW["REQUEST_BODY_MAX_BYTES"])

# --- cron (see docs/cron.md) ---------------------------------------------------------------------
BEAMCLAW_CRON = {
    # Shortest `every` a tenant may ask for (API and tool); the admin is not bound by it.
    "MIN_INTERVAL_SECONDS": env_int("BEAMCLAW_CRON_MIN_INTERVAL_SECONDS", 60),
    # Jobs one tenant may have (enabled or not); the cap keeps one tenant's schedule from crowding others'.
    "MAX_JOBS_PER_TENANT": env_int("BEAMCLAW_CRON_MAX_JOBS_PER_TENANT", 100),
    # A run still going after this long (per job: timeout_seconds) is marked failed and aborted.
    "RUN_TIMEOUT_SECONDS": env_int("BEAMCLAW_CRON_RUN_TIMEOUT_SECONDS", 3600),
    "MAX_CONSECUTIVE_ERRORS": env_int("BEAMCLAW_CRON_MAX_CONSECUTIVE_ERRORS", 3),
    # A recurring occurrence claimed later than this (beat was down) is recorded as skipped, not run late.
    "MISFIRE_GRACE_SECONDS": env_int("BEAMCLAW_CRON_MISFIRE_GRACE_SECONDS", 300),
    # The sweeper fires occurrences beat did not wake within SWEEP_SLACK, and ends stuck runs.
    "SWEEP_SECONDS": env_float("BEAMCLAW_CRON_SWEEP_SECONDS", 5.0),
    "SWEEP_SLACK_SECONDS": env_float("BEAMCLAW_CRON_SWEEP_SLACK_SECONDS", 5.0),
    "DELIVERY_ATTEMPTS": env_int("BEAMCLAW_CRON_DELIVERY_ATTEMPTS", 5),
    "DELIVERY_RETRY_BASE_SECONDS": env_float("BEAMCLAW_CRON_DELIVERY_RETRY_BASE_SECONDS", 1.0),
    "DELIVERY_TIMEOUT_SECONDS": env_float("BEAMCLAW_CRON_DELIVERY_TIMEOUT_SECONDS", 10.0),
}
if env_bool("BEAMCLAW_CRON_WEBHOOK_ALLOW_PRIVATE", False):
    raise ImproperlyConfigured(
        "BEAMCLAW_CRON_WEBHOOK_ALLOW_PRIVATE was removed: private addresses are refused by default. List the "
        "ranges webhooks may reach in BEAMCLAW_OUTBOUND_ALLOW_CIDRS (e.g. 10.0.0.0/8) and unset it."
    )
# --- end cron -----------------------------------------------------------------------------------

# --- channels (channels_app; see docs/channels.md) -----------------------------------------------
BEAMCLAW_CHANNELS = {
    # Attempts per reply; transient errors wait DELIVERY_RETRY_BASE_SECONDS × 2^n (or the platform's Retry-After).
    "DELIVERY_ATTEMPTS": env_int("BEAMCLAW_CHANNEL_DELIVERY_ATTEMPTS", 5),
    "DELIVERY_RETRY_BASE_SECONDS": env_float("BEAMCLAW_CHANNEL_DELIVERY_RETRY_BASE_SECONDS", 1.0),
    # One attempt's limit, for transports that do not bring their own.
    "DELIVERY_TIMEOUT_SECONDS": env_float("BEAMCLAW_CHANNEL_DELIVERY_TIMEOUT_SECONDS", 10.0),
}
# Discord's REST API and gateway; pointed elsewhere (a stand-in, a proxy) as ANTHROPIC_BASE_URL is for the model.
DISCORD_API_BASE_URL = (os.environ.get("DISCORD_API_BASE_URL") or "https://discord.com/api/v10").rstrip("/")
DISCORD_GATEWAY_URL = os.environ.get("DISCORD_GATEWAY_URL") or "wss://gateway.discord.gg/"
# How often `run_discord` reloads the accounts besides the change notices it gets (a notice lost with Redis).
DISCORD_RELOAD_SECONDS = env_float("BEAMCLAW_DISCORD_RELOAD_SECONDS", 5.0)
# --- end channels --------------------------------------------------------------------------------

# --- outbound requests (beamclaw_project/infra/address_policy.py; see docs/tools.md) --------------
def env_cidrs(name: str) -> list[str]:
    """Comma-separated networks (`10.0.0.0/8`, `fd00::/8`, or one address)."""
    entries = [entry.strip() for entry in os.environ.get(name, "").split(",") if entry.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name}: {entry!r} is not a network ({exc}). Give comma-separated CIDRs such as 10.0.0.0/8,fd00::/8."
            ) from None
    return entries


BEAMCLAW_OUTBOUND = {
    # Non-public ranges that web_fetch, webhooks and every other outbound request may reach anyway.
    # Empty (the default) refuses loopback, private, link-local/metadata and every other non-public address.
    "ALLOW_CIDRS": env_cidrs("BEAMCLAW_OUTBOUND_ALLOW_CIDRS"),
}
# --- end outbound --------------------------------------------------------------------------------

# Every process's level, the Celery worker's too (sessions/management/commands/worker.py).
LOG_LEVEL = (os.environ.get("LOG_LEVEL") or "INFO").strip().upper()
_CELERY_TASK_LINES_LEVEL = "WARNING" if LOG_LEVEL == "INFO" else LOG_LEVEL  # (see LOGGING's loggers)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # The tenant, session and run a line is about, from the log context (beamclaw_project/infra/log_context.py).
    "filters": {"ids": {"()": "beamclaw_project.infra.log_context.LogContextFilter"}},
    "formatters": {
        # One JSON object per line (docs/metrics.md), the default: what log collectors parse.
        "json": {"()": "beamclaw_project.infra.log_context.JsonFormatter"},
        # For a person at a terminal: LOG_FORMAT=plain.
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(ids)s %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": (os.environ.get("LOG_FORMAT") or "json").strip().lower(),
            "filters": ["ids"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},  # the anthropic SDK's client: one INFO line per model request
        "daphne": {"level": "WARNING"},
        # Daphne's access log, where it goes through logging (JSON lines: infra/log_context.py): at INFO,
        # so LOG_LEVEL=WARNING leaves it out too.
        "daphne.access": {"level": LOG_LEVEL},
        "django.channels.server": {"level": "WARNING"},
        # Celery's lines for every task it receives and finishes: a run is followed by its own lines (docs/metrics.md),
        # and Flower lists the tasks. Failures are still logged; LOG_LEVEL=DEBUG brings these back.
        "celery.worker.strategy": {"level": _CELERY_TASK_LINES_LEVEL},
        "celery.app.trace": {"level": _CELERY_TASK_LINES_LEVEL},
    },
}

# --- metrics and logs (docs/metrics.md) ----------------------------------------------------------
LOG_FORMAT = LOGGING["handlers"]["console"]["formatter"]
if LOG_FORMAT not in LOGGING["formatters"]:
    raise ImproperlyConfigured(
        f"LOG_FORMAT={os.environ.get('LOG_FORMAT')!r} is not a log format: use json (one JSON object per line, "
        "the default) or plain (for reading at a terminal)."
    )
# Python's warnings (a library's deprecation, Celery's about running as root) become log lines in that format.
logging.captureWarnings(True)
# Every process writes its metric samples to files here and `GET /metrics` adds them up (prometheus_client's
# multiprocess mode). Set before any metric exists: beamclaw_project/infra/metrics.py chooses the mode on import.
# The processes of one host must share it, and it should start empty with them (docs/metrics.md).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(BASE_DIR / ".run" / "metrics"))
try:
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
except OSError as exc:
    raise ImproperlyConfigured(
        f"PROMETHEUS_MULTIPROC_DIR={os.environ['PROMETHEUS_MULTIPROC_DIR']!r} cannot be created ({exc}): point it at "
        "a writable directory that every BeamClaw process of this host shares."
    ) from None
BEAMCLAW_METRICS = {
    # The bearer token `GET /metrics` asks for. Unset: only clients on this machine may scrape, and only
    # directly (a request a proxy forwarded is refused), since anyone reaching a proxy would be "local".
    "TOKEN": os.environ.get("BEAMCLAW_METRICS_TOKEN", ""),
}
# --- end metrics and logs ------------------------------------------------------------------------

# --- dashboard (docs/dashboard.md) ---------------------------------------------------------------
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:runs"
BEAMCLAW_DASHBOARD = {
    # How often an open runs page re-reads the live runs (one indexed query per page per poll).
    "LIVE_POLL_SECONDS": env_float("BEAMCLAW_DASHBOARD_LIVE_POLL_SECONDS", 1.0),
    # Runs one dashboard page may follow at once over its socket (each is one Redis stream reader).
    "MAX_FOLLOWED_RUNS": 20,
}
# --- end dashboard -------------------------------------------------------------------------------

# --- Tools (tools/; see docs/tools.md) -----------------------------------------------------------
# `process` calls must reach the worker that owns the background process: each worker also consumes
# its own direct queue (`<nodename>.dq2`), and process handles name the node.
CELERY_WORKER_DIRECT = True
BEAMCLAW_TOOLS = {
    # Per-session workspaces, the only writable place inside the exec sandbox (mounted at /workspace).
    "WORKSPACE_ROOT": Path(os.environ.get("BEAMCLAW_WORKSPACE_ROOT") or BASE_DIR / ".run" / "workspaces"),
    "EXEC_TIMEOUT_SECONDS": env_float("BEAMCLAW_EXEC_TIMEOUT_SECONDS", 120.0),
    "EXEC_MAX_TIMEOUT_SECONDS": env_float("BEAMCLAW_EXEC_MAX_TIMEOUT_SECONDS", 1800.0),
    # A command still running after this long continues in the background and the call returns a handle.
    "EXEC_YIELD_SECONDS": env_float("BEAMCLAW_EXEC_YIELD_SECONDS", 10.0),
    "EXEC_KILL_GRACE_SECONDS": env_float("BEAMCLAW_EXEC_KILL_GRACE_SECONDS", 5.0),
    "EXEC_OUTPUT_LIMIT_BYTES": env_int("BEAMCLAW_EXEC_OUTPUT_LIMIT_BYTES", 200_000),
    "EXEC_MEMORY_MB": env_int("BEAMCLAW_EXEC_MEMORY_MB", 1024),
    "EXEC_CPU_SECONDS": env_int("BEAMCLAW_EXEC_CPU_SECONDS", 600),
    # Per session (all its sandboxes share one uid): parallel calls, background processes, and the few
    # seconds the kernel takes to release a finished sandbox's pid namespace all count.
    "EXEC_MAX_PROCESSES": env_int("BEAMCLAW_EXEC_MAX_PROCESSES", 256),
    # Limits for all of a session's (and a tenant's) sandboxes together on one worker host, enforced by
    # cgroups (v2 delegated, or v1 memory+pids) where the worker can create them; `manage.py doctor`
    # says which. The session's process cap is EXEC_MAX_PROCESSES.
    "EXEC_CGROUPS": env_bool("BEAMCLAW_EXEC_CGROUPS", True),
    "EXEC_SESSION_MEMORY_MB": env_int("BEAMCLAW_EXEC_SESSION_MEMORY_MB", 1536),
    "EXEC_TENANT_MEMORY_MB": env_int("BEAMCLAW_EXEC_TENANT_MEMORY_MB", 4096),
    "EXEC_TENANT_MAX_PROCESSES": env_int("BEAMCLAW_EXEC_TENANT_MAX_PROCESSES", 1024),
    # Disk a session's workspace may take (see docs/tools.md: checked before and while commands run,
    # and no file may grow past what is left).
    "EXEC_WORKSPACE_MB": env_int("BEAMCLAW_EXEC_WORKSPACE_MB", 1024),
    "EXEC_FILE_SIZE_MB": env_int("BEAMCLAW_EXEC_FILE_SIZE_MB", 256),
    "EXEC_TMP_SIZE_MB": env_int("BEAMCLAW_EXEC_TMP_SIZE_MB", 64),
    "EXEC_MAX_BACKGROUND_PER_SESSION": env_int("BEAMCLAW_EXEC_MAX_BACKGROUND_PER_SESSION", 8),
    # A tenant's share of a worker's background processes (all its sessions together); keep it well
    # below the per-worker total so a few tenants at their cap still leave room for the others.
    "EXEC_MAX_BACKGROUND_PER_TENANT": env_int("BEAMCLAW_EXEC_MAX_BACKGROUND_PER_TENANT", 16),
    "EXEC_MAX_BACKGROUND_PER_WORKER": env_int("BEAMCLAW_EXEC_MAX_BACKGROUND_PER_WORKER", 64),
    # Workspaces have no quota of their own: exec refuses to start, and stops running commands, when the
    # workspace filesystem gets this close to full (it is usually shared with Postgres and the logs).
    "EXEC_MIN_FREE_DISK_MB": env_int("BEAMCLAW_EXEC_MIN_FREE_DISK_MB", 2048),
    "EXEC_MIN_FREE_INODES": env_int("BEAMCLAW_EXEC_MIN_FREE_INODES", 100_000),
    # Finished background processes stay listed (with their output) this long.
    "EXEC_BACKGROUND_RETENTION_SECONDS": env_int("BEAMCLAW_EXEC_BACKGROUND_RETENTION_SECONDS", 1800),
    # Sandboxes run as unprivileged host uids BASE..BASE+COUNT-1, one per session (see tools/sandbox.py).
    "SANDBOX_UID_BASE": env_int("BEAMCLAW_SANDBOX_UID_BASE", 200_000),
    "SANDBOX_UID_COUNT": env_int("BEAMCLAW_SANDBOX_UID_COUNT", 60_000),
    # Hosts (`name` or `name:port`) web_fetch may reach even though they resolve to non-public addresses.
    "WEB_FETCH_ALLOW_HOSTS": [
        h.strip().lower() for h in os.environ.get("BEAMCLAW_WEB_FETCH_ALLOW_HOSTS", "").split(",") if h.strip()
    ],
    "WEB_FETCH_TIMEOUT_SECONDS": env_float("BEAMCLAW_WEB_FETCH_TIMEOUT_SECONDS", 30.0),
    "WEB_FETCH_MAX_BYTES": env_int("BEAMCLAW_WEB_FETCH_MAX_BYTES", 2_000_000),
    "WEB_FETCH_MAX_REDIRECTS": env_int("BEAMCLAW_WEB_FETCH_MAX_REDIRECTS", 5),
    "WEB_FETCH_MAX_CHARS": env_int("BEAMCLAW_WEB_FETCH_MAX_CHARS", 50_000),
    "APPROVAL_TIMEOUT_SECONDS": env_float("BEAMCLAW_APPROVAL_TIMEOUT_SECONDS", 120.0),
    "MAX_TOOL_CALLS_PER_STEP": env_int("BEAMCLAW_MAX_TOOL_CALLS_PER_STEP", 16),
    # Tool invocations through POST /api/tools/invoke running at once per tenant (each holds a worker thread).
    "MAX_INVOCATIONS_IN_FLIGHT_PER_TENANT": env_int("BEAMCLAW_MAX_INVOCATIONS_IN_FLIGHT_PER_TENANT", 16),
    # How long POST /api/tools/invoke waits for the tool's result before answering "still running".
    "INVOKE_WAIT_SECONDS": env_float("BEAMCLAW_INVOKE_WAIT_SECONDS", 60.0),
    # Skills (docs/skills.md). The server folders an agent's `skills_dirs` may point into, colon-separated
    # absolute paths; empty (the default) means no server folders at all: tenants upload their skills.
    "SKILLS_ROOTS": [Path(p) for p in os.environ.get("BEAMCLAW_SKILLS_ROOTS", "").split(":") if p.strip()],
    # Where each worker unpacks uploaded skills (one folder per content hash); safe to delete any time.
    "SKILLS_CACHE_ROOT": Path(os.environ.get("BEAMCLAW_SKILLS_CACHE_ROOT") or BASE_DIR / ".run" / "skills"),
    # What one upload may hold: the request body (zip or SKILL.md), files, bytes per file and in total.
    "SKILL_UPLOAD_MAX_BYTES": env_int("BEAMCLAW_SKILL_UPLOAD_MAX_BYTES", 1_000_000),
    "SKILL_MAX_FILES": env_int("BEAMCLAW_SKILL_MAX_FILES", 200),
    "SKILL_MAX_FILE_BYTES": env_int("BEAMCLAW_SKILL_MAX_FILE_BYTES", 512_000),
    "SKILL_MAX_TOTAL_BYTES": env_int("BEAMCLAW_SKILL_MAX_TOTAL_BYTES", 4_000_000),
    "SKILLS_MAX_PER_TENANT": env_int("BEAMCLAW_SKILLS_MAX_PER_TENANT", 200),
}
# --- end of tools block -------------------------------------------------------------------------
