"""Loaded as a pytest plugin (see pytest.ini) so these defaults are in place before Django reads its
settings. The suite owns its own database and Redis db; it never touches the ones `make run` uses."""

import atexit
import os
import shutil
import tempfile

os.environ["DATABASE_URL"] = os.environ.get("TEST_DATABASE_URL", "postgres:///beamclaw_test")
os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# `make test` runs the suite in parallel processes (pytest-xdist, `-n`): each has a stack of its own (Daphne,
# workers, fakes), so each gets its own database and Redis db too: gw0 keeps the ones above, gw1 the
# database with `_gw1` appended and the Redis db below, and so on.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if _worker != "gw0":
    _index = int(_worker.removeprefix("gw"))
    os.environ["DATABASE_URL"] += f"_{_worker}"
    _redis_base, _, _db = os.environ["REDIS_URL"].rpartition("/")
    os.environ["REDIS_URL"] = f"{_redis_base}/{int(_db or 0) - _index}"
os.environ.pop("CELERY_BROKER_URL", None)
# The suite's processes (this one, Daphne, workers) count their metrics into a directory of their own, not
# the one `make run` uses; `service_env` hands it on to the processes the suite starts.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"beamclaw-metrics-{_worker}-")
atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)
# Every timing setting (leases, housekeeping, retries, timeouts) keeps its production default: a
# shortened one hides real stalls. Only the crash-recovery tests shorten the lease, for the workers they
# start themselves (tests/conftest.py: CRASH_RECOVERY_TIMINGS).
for name in [n for n in os.environ if n.startswith("BEAMCLAW_") and n.endswith(("_SECONDS", "_MS"))]:
    del os.environ[name]
os.environ["DB_POOL_MAX_SIZE"] = "8"
