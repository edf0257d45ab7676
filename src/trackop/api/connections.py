"""The connection budget of an MLflow tracking database (pure): what the tracking setup
needs against the limits it is under, from ``spec.postgres.tuning`` and numbers the
caller read from the server.

Connection budget
-----------------
One process using MLflow's SQLAlchemy store holds at most
``per_process = pool.size + overflow`` connections per engine, where ``overflow`` is
``pool.maxOverflow``, except that 0 counts as 10: MLflow 3.17 passes
``MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW`` to SQLAlchemy only when it is non-zero, so 0
leaves SQLAlchemy's default of 10. Each MLflow server worker opens two engines (the
tracking store and the model registry store each keep their own pool). So:

* ``server    = replicas * workers * 2 * per_process``
* ``clients   = expectedClients * per_process`` (clients using the database directly)
* ``migration = 2`` (the operator's in-process migration: Alembic's engine plus its
  advisory-lock session)
* ``reserve   = 2`` (the operator's own checks: admin session and role login)

``required`` is their sum. The ``limit`` is the smallest of the database's connection
limit, the role's connection limit (either ignored when -1, meaning none) and
``max_connections - superuser/reserved slots - connections used by others``.
The budget holds when ``required <= limit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field

from . import conditions as cond
from .tuning import TuningSpec

MIGRATION_CONNECTIONS = 2  # the in-process migration: the Alembic engine plus its advisory-lock session
OPERATOR_RESERVE = 2  # the operator's own checks (admin session + role login)
# MLflow's server builds one engine (one pool) for the tracking store and another for
# the model registry store in every worker (initialize_backend_stores).
ENGINES_PER_SERVER_WORKER = 2
# SQLAlchemy QueuePool's default max_overflow, which applies when MLflow drops a 0.
SQLALCHEMY_DEFAULT_MAX_OVERFLOW = 10


@dataclass(frozen=True)
class ConnectionBudget:
    """Connections the tracking setup needs against the tightest limit it is under.

    ``limit`` is the configured one (database, role, or max_connections minus reserved
    slots): it goes into status, so it must not move with other sessions, or every drift
    check would write status. ``available`` also subtracts other databases' sessions now:
    the verdict uses it."""

    required: int
    limit: int | None  # None: unknown
    breakdown: dict[str, int] = dataclass_field(default_factory=dict)  # server, clients, migration, reserve
    available: int | None = None  # None: the same as limit

    @property
    def within(self) -> bool:
        """True when the limit is unknown or what is available now is not exceeded."""
        headroom = self.limit if self.available is None else self.available
        return headroom is None or self.required <= headroom


def _per_process(spec: TuningSpec) -> int:
    # MLflow ignores a max_overflow of 0 (falsy), leaving SQLAlchemy's default of 10.
    overflow = spec.max_overflow or SQLALCHEMY_DEFAULT_MAX_OVERFLOW
    return spec.pool_size + overflow


def required_connections(spec: TuningSpec, server_replicas: int, server_workers: int) -> dict[str, int]:
    """Peak connections by source: ``server``, ``clients``, ``migration``, ``reserve``."""
    per_process = _per_process(spec)
    return {
        "server": server_replicas * server_workers * ENGINES_PER_SERVER_WORKER * per_process,
        "clients": spec.expected_clients * per_process,
        "migration": MIGRATION_CONNECTIONS,
        "reserve": OPERATOR_RESERVE,
    }


def connection_budget(spec: TuningSpec, server_replicas: int, server_workers: int, *,
                      database_limit: int, role_limit: int, server_max_connections: int | None,
                      reserved_slots: int, used_by_others: int) -> ConnectionBudget:
    """Required connections against the smallest applicable limit (-1 limits are ignored).

    ``server_max_connections`` of None (unknown) leaves the server-wide term out.
    """
    breakdown = required_connections(spec, server_replicas, server_workers)
    configured = [lim for lim in (database_limit, role_limit) if lim >= 0]
    now = list(configured)
    if server_max_connections is not None:
        # Superuser/reserved slots are never ours; other databases' sessions not at the moment.
        configured.append(server_max_connections - reserved_slots)
        now.append(server_max_connections - reserved_slots - used_by_others)
    return ConnectionBudget(
        required=sum(breakdown.values()),
        limit=min(configured) if configured else None,
        breakdown=breakdown,
        available=min(now) if now else None,
    )


def budget_condition(budget: ConnectionBudget) -> cond.Condition:
    """The ConnectionBudget condition (the full reconcile writes it; the drift check
    recomputes it from its snapshot and compares)."""
    parts = ", ".join(f"{k} {v}" for k, v in budget.breakdown.items())
    if budget.within:
        return cond.Condition(cond.CONNECTION_BUDGET, "True", "WithinLimit",
                              f"needs {budget.required} connections ({parts}) of {budget.limit}")
    others = "" if budget.available in (None, budget.limit) else \
        f" ({budget.limit - budget.available} of the limit {budget.limit} in use by other sessions)"
    return cond.Condition(cond.CONNECTION_BUDGET, "False", "OverBudget",
                          f"may need {budget.required} connections ({parts}) but only "
                          f"{budget.available if budget.available is not None else budget.limit} are "
                          f"available{others}: lower server replicas, workers, pool or expectedClients, or "
                          "raise the limit, before clients fail with 'too many connections'")
