#!/usr/bin/env bash
# Stands in for the official postgres image's entrypoint (docker-library/postgres) on the
# local test bed, with the same contract: PGDATA, POSTGRES_USER (default postgres),
# POSTGRES_PASSWORD, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), POSTGRES_INITDB_ARGS;
# args "postgres -c name=value ..." (or just the flags). It uses Debian's server binaries
# (the newest /usr/lib/postgresql/<major>/bin) instead of the image's. No initdb.d scripts,
# no POSTGRES_DB, no root-to-postgres step-down (the Pod runs it as its own uid).
set -Eeuo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n | tail -n1 || :)
[ -n "$bin" ] && export PATH="$PATH:$bin"   # after the PATH given, as the image has it
if [ $# = 0 ] || [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi

# Every start, as the image does: a volume's fsGroup ownership may have opened PGDATA up.
if [ "$1" = postgres ]; then mkdir -p "$PGDATA" && chmod 700 "$PGDATA"; fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "error: POSTGRES_PASSWORD is not set (POSTGRES_HOST_AUTH_METHOD=$auth)" >&2; exit 1
  fi
  # initdb needs a passwd entry for its uid; the Pod's uid has none: nss_wrapper, as the
  # official entrypoint does.
  nss=$(ls /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so 2>/dev/null | head -n1 || :)
  if ! getent passwd "$(id -u)" >/dev/null && [ -n "$nss" ]; then
    NSS_WRAPPER_PASSWD=$(mktemp) NSS_WRAPPER_GROUP=$(mktemp)
    echo "postgres:x:$(id -u):$(id -g):PostgreSQL:$PGDATA:/bin/false" > "$NSS_WRAPPER_PASSWD"
    echo "postgres:x:$(id -g):" > "$NSS_WRAPPER_GROUP"
    export LD_PRELOAD=$nss NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
  fi
  # The password reaches initdb through a file descriptor, never argv.
  # shellcheck disable=SC2086
  initdb --username="${POSTGRES_USER:-postgres}" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
    --auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-}
  if [ -n "${NSS_WRAPPER_PASSWD:-}" ]; then
    rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"; unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
  fi
  printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
  # The image listens on '*' (every interface of the Pod); on the bed the Pod's network is
  # this machine's loopback, so 127.0.0.1 stands for the Pod's interfaces.
  printf "\nlisten_addresses = '127.0.0.1'\n" >> "$PGDATA/postgresql.conf"
fi

exec "$@"
