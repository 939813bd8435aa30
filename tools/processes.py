"""Background processes: exec commands that outlived their yield window (or asked for `background`).

A process lives on the worker that started it (its pipes and its sandbox belong to that OS process), so
its handle names the worker's Celery node (`proc-<hex>@<node>`) and `process` calls about it are sent to
that node's direct queue. A summary of every process is mirrored in Redis per tenant and scope, so
`process list` and the per-session limit work from any worker, and a process whose worker died shows as
`lost` instead of silently vanishing.

Caps, so that no tenant can take another's share of a worker: at most EXEC_MAX_BACKGROUND_PER_SESSION
per session (counted over every worker, from the mirror), EXEC_MAX_BACKGROUND_PER_TENANT per tenant on
a worker, and EXEC_MAX_BACKGROUND_PER_WORKER in all. A session or tenant at its own cap is refused (its
own processes are in the way, and `process kill` frees them). A full worker refuses only `background`
requests: a command that outlives its yield window there stays in the foreground until it ends, so one
tenant's background processes never make another tenant's `echo` fail.

Cleanup, from each worker's housekeeping loop: processes of a session that was closed or deleted are
killed; finished entries are forgotten after EXEC_BACKGROUND_RETENTION_SECONDS. A process's own
timeout (exec's `timeout`, at most EXEC_MAX_TIMEOUT_SECONDS) bounds its lifetime in any case.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from django.conf import settings

from beamclaw_project.infra.heartbeats import node_alive
from beamclaw_project.infra.redis import redis_client
from tools.sandbox import SandboxProcess


def _mirror_key(tenant_id, scope: str) -> str:
    return f"bc:procs:{tenant_id}:{scope}"


def _mirror_ttl() -> int:
    conf = settings.BEAMCLAW_TOOLS
    return int(conf["EXEC_MAX_TIMEOUT_SECONDS"] + conf["EXEC_BACKGROUND_RETENTION_SECONDS"])


def handle_node(handle: str) -> str | None:
    """The Celery node that owns a handle, or None when it is not a handle."""
    prefix, sep, node = handle.partition("@")
    return node if sep and prefix.startswith("proc-") and node else None


def owning_node(tool_input: dict) -> str | None:
    """The worker owning the process a `process` call is about (ToolSpec.runs_on), else None."""
    handle = tool_input.get("handle") if isinstance(tool_input, dict) else None
    return handle_node(handle) if isinstance(handle, str) else None


@dataclass
class BackgroundProcess:
    handle: str
    process: SandboxProcess
    tenant_id: int
    scope: str
    command: str
    node: str
    poll_offset: int = 0
    finished_at: float | None = None

    def summary(self) -> dict:
        return {
            "handle": self.handle,
            "command": self.command,
            "status": "running" if self.process.running else "exited",
            "exit_code": self.process.exit_code,
            "timed_out": self.process.timed_out,
            "stopped_for": self.process.stopped_for,
            "started_at": self.process.started_at,
            "finished_at": self.finished_at,
            "node": self.node,
        }


@dataclass(eq=False)
class Slot:
    """A background place held for a tenant and scope (see ProcessTable.claim)."""

    tenant_id: int
    scope: str


class ProcessTable:
    """This worker's background processes."""

    def __init__(self):
        self._items: dict[str, BackgroundProcess] = {}
        self._slots: list[Slot] = []  # claimed, not yet added or released
        self._lock = threading.Lock()

    def _problem_locked(self, tenant_id, scope: str, *, worker: bool, session_count: int = 0) -> str | None:
        conf = settings.BEAMCLAW_TOOLS
        held = [(e.tenant_id, e.scope) for e in self._items.values() if e.process.running]
        held += [(slot.tenant_id, slot.scope) for slot in self._slots]
        in_session = max(session_count, sum(1 for held_by in held if held_by == (tenant_id, scope)))
        if in_session >= (limit := conf["EXEC_MAX_BACKGROUND_PER_SESSION"]):
            return (
                f"this session already has {in_session} background processes running (at most {limit} per "
                "session); stop one with the process tool (action kill; action list shows them) or wait for "
                "one to finish"
            )
        in_tenant = sum(1 for held_tenant, _ in held if held_tenant == tenant_id)
        if in_tenant >= (limit := conf["EXEC_MAX_BACKGROUND_PER_TENANT"]):
            return (
                f"this tenant already has {in_tenant} background processes running on this worker (at most "
                f"{limit} per tenant, over all its sessions); stop some with the process tool (action kill, "
                "in the sessions that started them) or wait for them to finish"
            )
        if worker and len(held) >= (limit := conf["EXEC_MAX_BACKGROUND_PER_WORKER"]):
            return (
                f"this worker already runs {len(held)} background processes (at most {limit}, shared by all "
                "tenants), so the command cannot run in the background; run it without `background` (the "
                "call then waits for it to finish) or try again later"
            )
        return None

    def cap_problem(self, *, tenant_id, scope: str, background: bool) -> str | None:
        """Why this tenant and scope may not start a command now, or None. The session and tenant caps
        refuse any command (any may end up in the background, and the caller's own processes are in the
        way); the worker's total refuses only commands asked to run in the background."""
        session_count = running_count(tenant_id=tenant_id, scope=scope)
        with self._lock:
            return self._problem_locked(tenant_id, scope, worker=background, session_count=session_count)

    def claim(self, *, tenant_id, scope: str) -> Slot | str:
        """Hold a background place for this tenant and scope, or say which cap is reached. Checking and
        holding happen under one lock, so parallel calls cannot all take the last place."""
        with self._lock:
            problem = self._problem_locked(tenant_id, scope, worker=True)
            if problem is not None:
                return problem
            slot = Slot(tenant_id=tenant_id, scope=scope)
            self._slots.append(slot)
            return slot

    def release(self, slot: Slot) -> None:
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)

    def add(self, *, process: SandboxProcess, slot: Slot, command: str, node: str) -> BackgroundProcess:
        entry = BackgroundProcess(
            handle=f"proc-{secrets.token_hex(6)}@{node}", process=process, tenant_id=slot.tenant_id,
            scope=slot.scope, command=command, node=node,
        )
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)
            self._items[entry.handle] = entry
            # It may have ended between the yield window and now; its exit callback found no entry then.
            if not process.running and entry.finished_at is None:
                entry.finished_at = time.time()
            self._mirror(entry)
        return entry

    def on_exit(self, process: SandboxProcess) -> None:
        """SandboxProcess exit callback (monitor thread)."""
        with self._lock:
            entry = next((e for e in self._items.values() if e.process is process), None)
            if entry is None:
                return
            entry.finished_at = time.time()
            self._mirror(entry)

    def get(self, handle: str, *, tenant_id, scope: str) -> BackgroundProcess | None:
        """A process of this tenant and scope; another scope's handle is as good as unknown."""
        entry = self._items.get(handle)
        if entry is None or entry.tenant_id != tenant_id or entry.scope != scope:
            return None
        return entry

    def _mirror(self, entry: BackgroundProcess) -> None:
        key = _mirror_key(entry.tenant_id, entry.scope)
        pipe = redis_client().pipeline(transaction=False)
        pipe.hset(key, entry.handle, json.dumps(entry.summary()))
        pipe.expire(key, _mirror_ttl())
        pipe.execute()

    def _forget(self, entries: list[BackgroundProcess]) -> None:
        if not entries:
            return
        pipe = redis_client().pipeline(transaction=False)
        for entry in entries:
            self._items.pop(entry.handle, None)
            pipe.hdel(_mirror_key(entry.tenant_id, entry.scope), entry.handle)
        pipe.execute()

    def housekeeping(self, *, live_sessions: Callable[[set[str]], set[str]]) -> None:
        """Kill processes whose session ended, forget finished ones past retention.

        `live_sessions(ids)` returns the subset of session ids that are still active."""
        retention = settings.BEAMCLAW_TOOLS["EXEC_BACKGROUND_RETENTION_SECONDS"]
        now = time.time()
        with self._lock:
            entries = list(self._items.values())
            expired = [e for e in entries if e.finished_at is not None and now - e.finished_at > retention]
            self._forget(expired)
        running = [e for e in entries if e.process.running and not e.scope.startswith("agent-")]
        if running:
            alive = live_sessions({e.scope for e in running})
            for entry in running:
                if entry.scope not in alive:
                    entry.process.terminate("session ended")


PROCESSES = ProcessTable()


def scope_processes(*, tenant_id, scope: str) -> list[dict]:
    """Every background process of a scope, from the Redis mirror; those whose worker is gone are `lost`."""
    raw = redis_client().hgetall(_mirror_key(tenant_id, scope))
    summaries = sorted((json.loads(value) for value in raw.values()), key=lambda s: s["started_at"])
    alive: dict[str, bool] = {}
    for summary in summaries:
        if summary["status"] == "running":
            node = summary["node"]
            if node not in alive:
                alive[node] = node_alive(node)
            if not alive[node]:
                summary["status"] = "lost"
    return summaries


def running_count(*, tenant_id, scope: str) -> int:
    return sum(1 for s in scope_processes(tenant_id=tenant_id, scope=scope) if s["status"] == "running")
