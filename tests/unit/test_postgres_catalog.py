"""The admin check on the catalog's privileges (trackop.postgres.catalog, no database)."""

from __future__ import annotations

import pytest

from trackop.postgres import catalog, errors
from trackop.postgres.catalog import AdminPrivileges

SUPERUSER = AdminPrivileges(superuser=True, createdb=True, createrole=True)
CREATOR = AdminPrivileges(superuser=False, createdb=True, createrole=True)


@pytest.mark.parametrize("privileges", [
    SUPERUSER, AdminPrivileges(True, False, False), CREATOR,
])
def test_check_admin_ok(privileges):
    assert catalog.check_admin(privileges, "admin") is None


@pytest.mark.parametrize("createdb, createrole, named, not_named", [
    (False, True, ["CREATEDB"], ["CREATEROLE"]),
    (True, False, ["CREATEROLE"], ["CREATEDB"]),
    (False, False, ["CREATEDB", "CREATEROLE"], []),
])
def test_check_admin_names_what_is_missing(createdb, createrole, named, not_named):
    with pytest.raises(errors.AdminLacksPrivileges) as info:
        catalog.check_admin(AdminPrivileges(False, createdb, createrole), "pgadmin")
    message = info.value.message
    assert "'pgadmin'" in message
    for word in named:
        assert word in message
    for word in not_named:
        assert word not in message
    assert info.value.reason == "AdminLacksPrivileges"
