"""The schema's errors, and their messages: what failed, never the URL or password.

SQLAlchemy and MLflow put the URL (password and all) into their exception texts; every
message trackop builds from them goes through :func:`migration_error`, which keeps what
says why and masks every form of the URL and password (:func:`url_secrets`).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from ..redaction import redact


class SchemaNewerThanTarget(Exception):
    """The database is at an Alembic revision the bundled MLflow does not know.

    A newer MLflow migrated it; trackop never downgrades (MLflow has no supported
    downgrade path and data could be lost).
    """


class SchemaMigrationError(Exception):
    """Reading or migrating the schema failed. The message never contains the URL or password."""


def url_secrets(url: str) -> list[str]:
    """Every form in which ``url`` or its password could show up in an error string."""
    found: list[str] = [url]
    try:
        raw_password = urlsplit(url).password  # still percent-encoded
    except ValueError:
        raw_password = None
    if raw_password:
        found += [raw_password, unquote(raw_password)]
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # an unparsable URL: the raw forms above are all we have
        return found
    if parsed.password:
        found.append(str(parsed.password))
    # SQLAlchemy renders URLs in errors and reprs; mask both renderings of the whole URL.
    found += [parsed.render_as_string(hide_password=False), parsed.render_as_string(hide_password=True)]
    return found


def describe_database(url: str) -> str:
    """``role@host:port/db`` for messages: enough to act on, no password, not the URL."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        return f"database {parsed.database!r} on {parsed.host}:{parsed.port or 5432} as role {parsed.username!r}"
    except Exception:
        return "the database (unparsable URL)"


def migration_error(action: str, url: str, exc: BaseException) -> SchemaMigrationError:
    """A SchemaMigrationError saying what failed, built from a redacted exception string.

    SQLAlchemy appends ``[SQL: ...]``, ``[parameters: ...]`` and a background link to its
    messages, and some errors (bad URL, engine reprs) embed the URL itself: keep only the
    first part, then mask every form of the URL and password.
    """
    detail = str(getattr(exc, "orig", None) or exc)
    detail = detail.split("\n[SQL:", 1)[0].split("\n(Background on this error", 1)[0]
    detail = " ".join(redact(detail, url_secrets(url)).split())
    if len(detail) > 500:
        detail = detail[:500] + "..."
    return SchemaMigrationError(f"{action} failed for {describe_database(url)}: {type(exc).__name__}: {detail}")
