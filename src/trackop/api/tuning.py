"""``spec.postgres.tuning``: its typed form, parsing, units and derived settings (pure).

Everything here is a pure function of ``spec.postgres.tuning``: no I/O, no Kubernetes,
no PostgreSQL. The connection budget is in ``budget.py``.

Units
-----
Memory settings use PostgreSQL's own syntax: an integer directly followed by ``kB``,
``MB``, ``GB`` or ``TB`` (case-sensitive, no space, no fraction), for example ``16MB``.
A bare number is rejected, because its meaning differs per parameter in PostgreSQL.
Every value must fit PostgreSQL's integer range in kB (at most ``2147483647kB``, just
under 2TB). ``serverMemory`` is a Kubernetes quantity instead (``8Gi``, ``8G``,
``1.5Gi``, ``8589934592``): binary suffixes ``Ki Mi Gi Ti Pi Ei`` are powers of 1024,
decimal suffixes ``k M G T P E`` powers of 1000; fractions are rounded down to a byte.

Limits (PostgreSQL 15's own)
----------------------------
================================  ==========  ============================
parameter                         minimum     maximum
================================  ==========  ============================
``maxConnections``                1           262143
``sharedBuffers``                 128kB       2147483647kB (int range)
``workMem``                       64kB        2147483647kB
``maintenanceWorkMem``            1MB         2147483647kB
``effectiveCacheSize``            8kB         2147483647kB (int range)
``pool.size``                     1           100
``pool.maxOverflow``              0           100
``expectedClients``               0           100000
================================  ==========  ============================

Scope
-----
``scope: Database`` (the default) changes only this database, with
``ALTER DATABASE ... SET`` for the per-session settings ``work_mem``,
``maintenance_work_mem`` and ``effective_cache_size``; ``maxConnections`` becomes the
database's connection limit (``ALTER DATABASE ... CONNECTION LIMIT``), and
``sharedBuffers`` is rejected because it is server-wide and needs a restart.
``scope: Server`` sets every derived or explicit setting server-wide, including
``shared_buffers`` and ``max_connections`` (both need a restart); the database then has
no connection limit of its own.

Automatic tuning
----------------
When ``serverMemory`` (the RAM of the PostgreSQL server, ``RAM`` below) is given, the
missing settings are derived from it; a value set explicitly always wins. With
``max_connections = maxConnections or 100`` (PostgreSQL's default):

* ``shared_buffers       = RAM / 4`` (only with scope Server)
* ``effective_cache_size = RAM * 3 / 4``
* ``maintenance_work_mem = min(RAM / 16, 2GB)``
* ``work_mem = (RAM - shared_buffers) / (3 * max_connections)``, at least 64kB, where
  ``shared_buffers`` is the explicit value, else ``RAM / 4`` (with scope Database too:
  the server is assumed to follow the same rule).

Every derived value of 1MB or more is rounded down to a whole MB; smaller ones are
rounded down to a multiple of 8kB. Why: ``shared_buffers`` and ``effective_cache_size``
are stored in 8kB pages, so an unaligned value would read back differently from
``pg_settings`` and look like drift forever. Derived values are then kept within the
limits above. Example, ``serverMemory: 8Gi``: ``shared_buffers = 2GB``,
``effective_cache_size = 6GB``, ``maintenance_work_mem = 512MB``,
``work_mem = (8GiB - 2GiB) / 300 = 20971kB``, rounded down to ``20MB``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

FIELD_PREFIX = "spec.postgres.tuning"


SCOPE_DATABASE = "Database"


SCOPE_SERVER = "Server"


SCOPES = (SCOPE_DATABASE, SCOPE_SERVER)


KB = 1


MB = 1024


GB = 1024 * MB


TB = 1024 * GB


PG_INT_MAX = 2147483647  # PostgreSQL GUCs are C ints: the kB value must fit


BLOCK_KB = 8  # PostgreSQL's page size; shared_buffers/effective_cache_size count pages


# (minimum kB, maximum kB), PostgreSQL 15's own bounds; the block-counted ones
# have a larger theoretical maximum, but a kB value still has to fit an int.
MEMORY_LIMITS_KB: dict[str, tuple[int, int]] = {
    "work_mem": (64, PG_INT_MAX),
    "maintenance_work_mem": (1 * MB, PG_INT_MAX),
    "shared_buffers": (128, min(PG_INT_MAX, (2**30 - 1) * BLOCK_KB)),
    "effective_cache_size": (BLOCK_KB, PG_INT_MAX),
}


MAX_CONNECTIONS_RANGE = (1, 262143)


POOL_SIZE_RANGE = (1, 100)


MAX_OVERFLOW_RANGE = (0, 100)


EXPECTED_CLIENTS_RANGE = (0, 100000)


DEFAULT_MAX_CONNECTIONS = 100  # PostgreSQL's default, used when none is given


DEFAULT_POOL_SIZE = 2


DEFAULT_MAX_OVERFLOW = 3


MAINTENANCE_WORK_MEM_CAP_KB = 2 * GB


POOL_SIZE_ENV = "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"


MAX_OVERFLOW_ENV = "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"


_MAX_LENGTH = 64  # longer than any sensible size; keeps int()/Fraction() from choking


_PG_UNITS_KB = {"kB": KB, "MB": MB, "GB": GB, "TB": TB}


# [0-9], not \d: \d also matches non-ASCII digits, which int() would accept.
_PG_MEMORY_RE = re.compile(r"([0-9]+)(kB|MB|GB|TB)")


_QUANTITY_RE = re.compile(r"\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|)")


_QUANTITY_FACTORS = {
    "": 1,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6,
    "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5, "E": 1000**6,
}


class TuningError(ValueError):
    """An invalid ``spec.postgres.tuning`` value; ``field`` is its path in the resource."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _field(name: str) -> str:
    return f"{FIELD_PREFIX}.{name}"


def parse_pg_memory(value: str, field: str) -> int:
    """PostgreSQL memory syntax (``16MB``) to kB; ``TuningError`` naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise TuningError(field, f"must be a string such as '64MB', not {value!r}")
    # Length first: int() refuses strings of over 4300 digits with a plain ValueError.
    match = _PG_MEMORY_RE.fullmatch(value) if len(value) <= _MAX_LENGTH else None
    if match is None:
        raise TuningError(
            field, f"{value!r} is not a PostgreSQL memory size: an integer followed by "
                   "kB, MB, GB or TB (case-sensitive, no space), e.g. '64MB'")
    kb = int(match.group(1)) * _PG_UNITS_KB[match.group(2)]
    if kb > PG_INT_MAX:
        raise TuningError(field, f"{value!r} is too large: at most {PG_INT_MAX}kB")
    return kb


def format_pg_memory(kb: int) -> str:
    """kB to PostgreSQL syntax in the largest exact unit: 16384 -> ``16MB``."""
    if kb < 0:
        raise ValueError(f"memory size must not be negative: {kb}")
    for unit, size in (("TB", TB), ("GB", GB), ("MB", MB)):
        if kb and kb % size == 0:
            return f"{kb // size}{unit}"
    return f"{kb}kB"


def parse_quantity(value: str, field: str) -> int:
    """Kubernetes quantity (``8Gi``, ``8G``, ``1.5Gi``, ``1024``) to bytes, rounded down."""
    if not isinstance(value, str):
        raise TuningError(field, f"must be a quantity string such as '8Gi', not {value!r}")
    match = _QUANTITY_RE.fullmatch(value) if len(value) <= _MAX_LENGTH else None
    if match is None:
        raise TuningError(
            field, f"{value!r} is not a Kubernetes quantity such as '8Gi', '8G' or '1.5Gi'")
    # Fraction, not float: '1.1Gi' must round down exactly, whatever its size.
    return int(Fraction(match.group(1)) * _QUANTITY_FACTORS[match.group(2)])


def _int_in(value: Any, field: str, bounds: tuple[int, int]) -> int:
    # bool is an int in Python, but "true" connections is a mistake, not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TuningError(field, f"must be an integer, not {value!r}")
    low, high = bounds
    if not low <= value <= high:
        raise TuningError(field, f"must be between {low} and {high}, not {value}")
    return value


def _memory_in(value: Any, field: str, parameter: str) -> int:
    kb = parse_pg_memory(value, field)
    low, high = MEMORY_LIMITS_KB[parameter]
    if not low <= kb <= high:
        raise TuningError(
            field, f"{value!r} is out of range for {parameter}: "
                   f"{format_pg_memory(low)} to {format_pg_memory(high)}")
    return kb


@dataclass(frozen=True)
class TuningSpec:
    """Validated ``spec.postgres.tuning``; memory in kB, server memory in bytes."""

    scope: str = SCOPE_DATABASE
    max_connections: int | None = None
    shared_buffers_kb: int | None = None
    work_mem_kb: int | None = None
    maintenance_work_mem_kb: int | None = None
    effective_cache_size_kb: int | None = None
    server_memory_bytes: int | None = None
    pool_size: int = DEFAULT_POOL_SIZE
    max_overflow: int = DEFAULT_MAX_OVERFLOW
    expected_clients: int = 0


def parse_tuning(tuning: Mapping[str, Any] | None) -> TuningSpec:
    """Validate the CRD's camelCase ``spec.postgres.tuning``; ``TuningError`` names the field."""
    tuning = tuning or {}
    if not isinstance(tuning, Mapping):
        raise TuningError(FIELD_PREFIX, f"must be an object, not {tuning!r}")

    def get(name: str) -> Any:
        return tuning.get(name)  # null and absent mean the same: not set

    scope = get("scope")
    if scope is None:
        scope = SCOPE_DATABASE
    if scope not in SCOPES:
        raise TuningError(_field("scope"), f"must be one of {', '.join(SCOPES)}, not {scope!r}")

    def memory(name: str, parameter: str) -> int | None:
        value = get(name)
        return None if value is None else _memory_in(value, _field(name), parameter)

    max_connections = get("maxConnections")
    if max_connections is not None:
        max_connections = _int_in(max_connections, _field("maxConnections"), MAX_CONNECTIONS_RANGE)
    shared_buffers = memory("sharedBuffers", "shared_buffers")
    if shared_buffers is not None and scope != SCOPE_SERVER:
        raise TuningError(
            _field("sharedBuffers"),
            "needs scope Server: shared_buffers is server-wide and needs a restart")
    work_mem = memory("workMem", "work_mem")
    maintenance_work_mem = memory("maintenanceWorkMem", "maintenance_work_mem")
    effective_cache_size = memory("effectiveCacheSize", "effective_cache_size")

    server_memory = get("serverMemory")
    if server_memory is not None:
        # Kubernetes quantities may be written as plain YAML integers (bytes).
        if isinstance(server_memory, int) and not isinstance(server_memory, bool):
            server_memory = str(server_memory)
        server_memory = parse_quantity(server_memory, _field("serverMemory"))
        if server_memory <= 0:
            raise TuningError(_field("serverMemory"), "must be more than 0")
        if shared_buffers is not None and shared_buffers * 1024 >= server_memory:
            # Otherwise the work_mem formula has nothing left to divide.
            raise TuningError(_field("sharedBuffers"), "must be smaller than serverMemory")

    pool = get("pool")
    if pool is None:
        pool = {}
    if not isinstance(pool, Mapping):
        raise TuningError(_field("pool"), f"must be an object, not {pool!r}")
    pool_size = pool.get("size")
    pool_size = (DEFAULT_POOL_SIZE if pool_size is None
                 else _int_in(pool_size, _field("pool.size"), POOL_SIZE_RANGE))
    max_overflow = pool.get("maxOverflow")
    max_overflow = (DEFAULT_MAX_OVERFLOW if max_overflow is None
                    else _int_in(max_overflow, _field("pool.maxOverflow"), MAX_OVERFLOW_RANGE))
    expected_clients = get("expectedClients")
    expected_clients = (0 if expected_clients is None
                        else _int_in(expected_clients, _field("expectedClients"),
                                     EXPECTED_CLIENTS_RANGE))

    return TuningSpec(
        scope=scope,
        max_connections=max_connections,
        shared_buffers_kb=shared_buffers,
        work_mem_kb=work_mem,
        maintenance_work_mem_kb=maintenance_work_mem,
        effective_cache_size_kb=effective_cache_size,
        server_memory_bytes=server_memory,
        pool_size=pool_size,
        max_overflow=max_overflow,
        expected_clients=expected_clients,
    )


def _derived(kb: int, parameter: str) -> int:
    """Round a derived value down (whole MB, else whole 8kB pages), then clamp to limits."""
    # Aligned values read back from pg_settings exactly, so they never look like drift.
    low, high = MEMORY_LIMITS_KB[parameter]
    kb = min(high, kb)
    kb = kb - kb % MB if kb >= MB else kb - kb % BLOCK_KB
    return max(low, kb)


def auto_tune(spec: TuningSpec) -> dict[str, int]:
    """Desired settings (memory in kB, ``max_connections`` a count); explicit values win.

    Keys appear only when set explicitly or derivable from ``server_memory_bytes``.
    """
    settings: dict[str, int] = {}
    ram_kb = None if spec.server_memory_bytes is None else spec.server_memory_bytes // 1024

    if spec.max_connections is not None:
        settings["max_connections"] = spec.max_connections

    # The shared_buffers the server has (or is assumed to have): needed by work_mem below.
    assumed_shared_buffers = spec.shared_buffers_kb
    if assumed_shared_buffers is None and ram_kb is not None:
        assumed_shared_buffers = _derived(ram_kb // 4, "shared_buffers")
    if spec.scope == SCOPE_SERVER and assumed_shared_buffers is not None:
        settings["shared_buffers"] = assumed_shared_buffers

    if spec.effective_cache_size_kb is not None:
        settings["effective_cache_size"] = spec.effective_cache_size_kb
    elif ram_kb is not None:
        settings["effective_cache_size"] = _derived(ram_kb * 3 // 4, "effective_cache_size")

    if spec.maintenance_work_mem_kb is not None:
        settings["maintenance_work_mem"] = spec.maintenance_work_mem_kb
    elif ram_kb is not None:
        settings["maintenance_work_mem"] = _derived(
            min(ram_kb // 16, MAINTENANCE_WORK_MEM_CAP_KB), "maintenance_work_mem")

    if spec.work_mem_kb is not None:
        settings["work_mem"] = spec.work_mem_kb
    elif ram_kb is not None and assumed_shared_buffers is not None:
        connections = spec.max_connections or DEFAULT_MAX_CONNECTIONS
        # Each connection may run a few sorts/hashes at once: 3 work_mem each is the budget.
        per_connection = max(0, ram_kb - assumed_shared_buffers) // (3 * connections)
        settings["work_mem"] = _derived(per_connection, "work_mem")

    return settings


_PER_SESSION = ("work_mem", "maintenance_work_mem", "effective_cache_size")


def settings_for_scope(spec: TuningSpec) -> dict[str, str]:
    """PostgreSQL parameter -> value to apply for the spec's scope (memory as ``16MB``)."""
    desired = auto_tune(spec)
    if spec.scope == SCOPE_SERVER:
        keys = list(desired)
    else:
        # Only user-settable parameters work with ALTER DATABASE ... SET.
        keys = [key for key in _PER_SESSION if key in desired]
    return {key: str(desired[key]) if key == "max_connections" else format_pg_memory(desired[key])
            for key in keys}


def connection_limit(spec: TuningSpec) -> int:
    """The database's CONNECTION LIMIT: maxConnections with scope Database, else -1 (none)."""
    if spec.scope == SCOPE_DATABASE and spec.max_connections is not None:
        return spec.max_connections
    return -1


def pool_env(spec: TuningSpec) -> dict[str, str]:
    """Environment for MLflow's SQLAlchemy pool (names read by mlflow.store.db.utils)."""
    return {POOL_SIZE_ENV: str(spec.pool_size), MAX_OVERFLOW_ENV: str(spec.max_overflow)}
