"""The bundled MLflow version and its Alembic revisions, read without importing MLflow.

Importing this module is cheap (no MLflow, no Alembic), and so are :func:`head_revision`
and :func:`known_revisions`: they read the revision ids out of the migration scripts'
source without executing them (executing them imports MLflow).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import threading
from functools import cache
from pathlib import Path

from .errors import SchemaMigrationError


def _mlflow_package_dir() -> Path:
    """The installed ``mlflow`` package's directory, found without importing the package."""
    spec = importlib.util.find_spec("mlflow")  # locates the package, does not execute it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mlflow (mlflow-skinny) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_bundled_mlflow_version() -> str:
    """``mlflow.version.VERSION`` without importing the ``mlflow`` package.

    ``import mlflow.version`` runs ``mlflow/__init__.py`` first (about 1.3 s); the version
    file itself only needs ``re`` and ``importlib.metadata``, so execute it on its own.
    """
    loaded = sys.modules.get("mlflow.version")
    if loaded is not None:
        return str(loaded.VERSION)
    path = _mlflow_package_dir() / "version.py"
    file_spec = importlib.util.spec_from_file_location("_trackop_mlflow_version", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return str(module.VERSION)


#: The MLflow version whose migrations this operator runs (``mlflow.version.VERSION``).
BUNDLED_MLFLOW_VERSION: str = _read_bundled_mlflow_version()


def _literal_assignments(source: str, names: frozenset[str]) -> dict[str, object]:
    """Module-level ``name = <literal>`` (or ``name: T = <literal>``) of ``names`` in ``source``."""
    found: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            found[target.id] = ast.literal_eval(value)  # ValueError unless a plain literal
    return found


def _as_tuple(down_revision: object) -> tuple[object, ...]:
    """Alembic's ``down_revision``: None, one id, or a tuple (list) of ids for a merge."""
    if down_revision is None:
        return ()
    if isinstance(down_revision, (tuple, list)):
        return tuple(down_revision)
    return (down_revision,)


def read_revision_graph(versions: Path) -> dict[str, tuple[str, ...]]:
    """``{revision: down_revisions}`` of the Alembic scripts in ``versions``, from their source.

    Alembic itself executes every script to read these two variables, and MLflow's scripts
    import MLflow's ORM (the whole ``mlflow`` package): reading the literals keeps that out
    of the operator. The files are the ones Alembic loads (``*.py`` directly in the
    directory, not ``__init__.py``); a script without literal ids is an error, not a guess.
    """
    graph: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.glob("*.py")):
        if path.name == "__init__.py" or path.name.startswith(".#"):
            continue
        try:
            ids = _literal_assignments(path.read_text(encoding="utf-8"), frozenset({"revision", "down_revision"}))
        except (OSError, SyntaxError, ValueError) as exc:
            raise SchemaMigrationError(f"cannot read the revision of MLflow's migration {path.name}: {exc}") from None
        revision, down = ids.get("revision"), ids.get("down_revision")
        downs = _as_tuple(down)
        if not isinstance(revision, str) or not all(isinstance(d, str) for d in downs):
            raise SchemaMigrationError(f"MLflow's migration {path.name} has no literal revision/down_revision")
        graph[revision] = downs
    missing = {d for downs in graph.values() for d in downs} - graph.keys()
    if missing:  # Alembic refuses such a directory too
        raise SchemaMigrationError(f"MLflow's migrations refer to unknown revisions {sorted(missing)}")
    return graph


def heads_of(graph: dict[str, tuple[str, ...]]) -> list[str]:
    """The revisions no other revision builds on (Alembic's heads), sorted."""
    return sorted(graph.keys() - {d for downs in graph.values() for d in downs})


_GRAPH_LOCK = threading.Lock()


@cache
def _read_mlflow_revision_graph() -> dict[str, tuple[str, ...]]:
    # The script directory of MLflow's own Alembic config (mlflow.store.db.utils.
    # _get_alembic_config): <package>/store/db_migrations, scripts in its versions/.
    return read_revision_graph(_mlflow_package_dir() / "store" / "db_migrations" / "versions")


def _revision_graph() -> dict[str, tuple[str, ...]]:
    # One reader at a time: kopf's handler threads ask at once after a restart, and
    # CPython 3.11's ast.parse is not safe to run in several threads at once ("AST
    # constructor recursion depth mismatch", CPython gh-106905). The cache makes it once.
    with _GRAPH_LOCK:
        return _read_mlflow_revision_graph()


@cache
def head_revision() -> str:
    """The single Alembic head of the bundled MLflow's migration scripts (imports no MLflow)."""
    heads = heads_of(_revision_graph())
    if len(heads) != 1:  # MLflow itself insists on one head (_get_latest_schema_revision)
        raise SchemaMigrationError(f"MLflow {BUNDLED_MLFLOW_VERSION} has {len(heads)} Alembic heads: {heads}")
    return heads[0]


@cache
def known_revisions() -> frozenset[str]:
    """Every Alembic revision in the bundled MLflow's migration scripts (imports no MLflow)."""
    return frozenset(_revision_graph())
