"""The secret sweep (tests/e2e/test_zz_secret_sweep.py) must run after every other e2e test:
the collection hook orders tiers unit, integration, e2e and keeps file order within one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

TESTS = Path(__file__).resolve().parents[1]


def test_the_secret_sweep_is_the_last_test_collected():
    spec = importlib.util.spec_from_file_location("tests_root_conftest", TESTS / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    # pytest collects directories and files in name order.
    items = [SimpleNamespace(fspath=path) for path in sorted(TESTS.rglob("test_*.py"))]
    conftest.pytest_collection_modifyitems(items)
    ordered = [Path(item.fspath).relative_to(TESTS).as_posix() for item in items]
    assert ordered[-1] == "e2e/test_zz_secret_sweep.py", ordered[-5:]
    tiers = [path.split("/")[0] for path in ordered]
    assert tiers == sorted(tiers, key=conftest._TIERS.index)
