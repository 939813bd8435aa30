"""Loaded as a pytest plugin (see pytest.ini) so these defaults are in place before Django reads its
settings. The suite owns its own database and Redis db; it never touches the ones `make run` uses."""

import os

os.environ["DATABASE_URL"] = os.environ.get("TEST_DATABASE_URL", "postgres:///beamclaw_test")
os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.pop("CELERY_BROKER_URL", None)
# Short leases and housekeeping so crash recovery is observable in seconds; quick provider retries.
os.environ["BEAMCLAW_RUN_LEASE_SECONDS"] = "2"
os.environ["BEAMCLAW_HOUSEKEEPING_SECONDS"] = "0.5"
os.environ["BEAMCLAW_PROVIDER_RETRY_BASE_SECONDS"] = "0.02"
os.environ["BEAMCLAW_RUN_WAIT_TIMEOUT_SECONDS"] = "60"
os.environ["DB_POOL_MAX_SIZE"] = "8"
