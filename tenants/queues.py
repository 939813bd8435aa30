"""Which tenant queues exist (queue names: beamclaw_project/infra/queues.py), and which of them a worker
pool consumes.

A worker consumes the queues of the tenants its pool admits: every active tenant by default, only some
(`worker --tenants a,b`) or all but some (`--exclude-tenants c`), so a large tenant can have workers of its
own and the others never wait behind it. Workers learn about new tenants twice over: a broadcast when the
tenant is created, and a periodic reconciliation against Postgres (for workers that were down during the
broadcast). Both go through `TenantPool.admits`, so a pool never picks up a tenant it was told to leave.

The broadcast is our own control command (`tenant_queue_add`, beamclaw_project/worker.py), not Celery's
`add_consumer`: that one would make every worker consume the queue, whatever its pool.

Unknown slugs (decision): `--tenants` naming a tenant that does not exist is an error, since a typo would
leave a pool idle and, when the other pools exclude that tenant, its runs with no worker at all; create
the tenant first. `--exclude-tenants` naming one is a warning: excluding a tenant before creating it is
how its dedicated pool is set up, and a typo there only leaves the tenant shared with this pool.
"""

from dataclasses import dataclass

from celery import current_app

from beamclaw_project.infra.queues import tenant_queue
from tenants.models import Tenant

TENANT_QUEUE_ADD = "tenant_queue_add"


@dataclass(frozen=True)
class TenantPool:
    """The tenants a worker serves: `only` (None: every tenant) minus `exclude`; `system` says whether it
    also consumes the system queue (chat-channel deliveries, cron settling)."""

    only: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    system: bool = True

    def admits(self, slug: str) -> bool:
        return (self.only is None or slug in self.only) and slug not in self.exclude

    def describe(self) -> str:
        if self.only is not None:
            tenants = f"the queues of tenants {', '.join(sorted(self.only))}"
        else:
            tenants = "every tenant's queue" + (f" except those of {', '.join(sorted(self.exclude))}" if self.exclude else "")
        return f"the system queue and {tenants}" if self.system else f"{tenants}, not the system queue"


EVERY_TENANT = TenantPool()


def active_tenant_queues(*, pool: TenantPool = EVERY_TENANT) -> list[str]:
    tenants = Tenant.objects.filter(status=Tenant.Status.ACTIVE)
    if pool.only is not None:
        tenants = tenants.filter(slug__in=pool.only)
    if pool.exclude:
        tenants = tenants.exclude(slug__in=pool.exclude)
    return [tenant_queue(slug) for slug in tenants.values_list("slug", flat=True)]


def tenant_pool_build(*, only: list[str] | None, exclude: list[str], system: bool) -> tuple[TenantPool, list[str]]:
    """The pool `worker --tenants/--exclude-tenants/--no-system-queue` asks for, and the warnings to print.
    Raises ValueError, saying what to do, when the request cannot make a useful worker."""
    if only is not None and not only:
        raise ValueError("--tenants needs at least one tenant slug, e.g. --tenants acme,globex.")
    named = set(only or ()) | set(exclude)
    known = set(Tenant.objects.filter(slug__in=named).values_list("slug", flat=True))
    if only is not None and (unknown := sorted(set(only) - known)):
        raise ValueError(
            f"No tenant {', '.join(unknown)}: --tenants takes existing tenant slugs "
            "(python manage.py create_tenant SLUG creates one; then start its pool)."
        )
    warnings = [
        f"No tenant {slug} yet: when it is created, its queue is left to other workers."
        for slug in sorted(set(exclude) - known)
    ]
    pool = TenantPool(only=frozenset(only) if only is not None else None, exclude=frozenset(exclude), system=system)
    if not system:
        warnings.append(
            "This worker does not consume the system queue: at least one worker of the fleet must "
            "(chat-channel replies and cron deliveries wait there)."
        )
    return pool, warnings


def announce_queue(slug: str) -> None:
    """Ask running workers to start consuming a new tenant's queue right away; each one checks its pool."""
    current_app.control.broadcast(TENANT_QUEUE_ADD, arguments={"slug": slug}, reply=False)
