#!/usr/bin/env bash
# The entrypoint of the node's PostgreSQL image (images.py), with the official image's
# contract (docker-library/postgres): PGDATA (default /var/lib/postgresql/data),
# POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD
# (default scram-sha-256), POSTGRES_INITDB_ARGS; args "postgres -c name=value ..." or just
# the flags; started as root it hands PGDATA to the postgres user (uid 999) and steps down.
# Not here: /docker-entrypoint-initdb.d scripts and the *_FILE variants.
set -Eeuo pipefail

if [ $# = 0 ] || [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi
# Every start, as the image does: a volume's fsGroup ownership may have opened PGDATA up.
mkdir -p "$PGDATA"
chmod 700 "$PGDATA" 2>/dev/null || :

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  user=${POSTGRES_USER:-postgres}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "error: POSTGRES_PASSWORD is not set (POSTGRES_HOST_AUTH_METHOD=$auth)" >&2
    exit 1
  fi
  # The password reaches initdb through a file descriptor, never argv.
  # shellcheck disable=SC2086
  initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
    --auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-}
  printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  db=${POSTGRES_DB:-$user}
  if [ "$db" != postgres ]; then
    # A server on the Unix socket only, for the first database, as the image does.
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start >/dev/null
    psql -v ON_ERROR_STOP=1 -h /tmp -U "$user" -d postgres -q \
      -c "CREATE DATABASE \"${db//\"/\"\"}\""
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
fi

exec "$@"
