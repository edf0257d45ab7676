"""PostgreSQL failures: each sets a condition reason and says the fix; none holds a secret.
"""

from __future__ import annotations


class PostgresError(Exception):
    """A failure with a condition reason and a message that says the fix. Never holds a secret."""

    reason = "PostgresError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnreachable(PostgresError):
    reason = "ServerUnreachable"


class PasswordRejected(PostgresError):
    reason = "AdminAuthenticationFailed"


class AdminLacksPrivileges(PostgresError):
    reason = "AdminLacksPrivileges"


class DatabaseTaken(PostgresError):
    reason = "DatabaseOwnedByOtherRole"


class RoleTaken(PostgresError):
    reason = "RoleNotManagedByTrackop"


class StatementFailed(PostgresError):
    reason = "StatementFailed"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate  # the server's SQLSTATE, for the callers that retry on some


class InvalidSetting(PostgresError):
    reason = "InvalidSetting"
