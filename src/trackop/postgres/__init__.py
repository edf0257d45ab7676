"""PostgreSQL: the one place trackop talks to it.

Deciding is pure (``plans``, ``templates``, ``server_settings``, ``artifact_trigger``: catalog
state in, statements out); ``statements.apply`` is the one place that executes them. Every
identifier and literal goes through ``psycopg.sql``, never an f-string. Passwords travel as
SCRAM-SHA-256 verifiers computed on this side (as psql's ``\\password`` does), so the clear
password never reaches the server's statement log, ``pg_stat_activity`` or an error message.

- ``errors``: failures, each with its condition reason
- ``sessions``: connecting, the admin sessions kept between reconciles, the role's login
- ``catalog``: the admin's privileges, the backend's role and database as they are
- ``statements``: a plan's steps and the executor
- ``plans``: the backend's role and database (create, restore, drop)
- ``templates``: the template database new backends are cloned from, and its role
- ``locks``: advisory locks
- ``artifact_trigger``: Direct mode's artifact location trigger
- ``server_settings``: tuning (per-database settings, connection limits, ALTER SYSTEM)
- ``snapshot``: the drift checks' server snapshot
"""
